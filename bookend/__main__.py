from bookend.cli import main

raise SystemExit(main())
