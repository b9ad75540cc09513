"""The options of dracut's `bond=NAME:SLAVES:OPTIONS[:MTU]`, given to systemd-networkd.

systemd-network-generator (checked with systemd 252) turns `bond=` into the bond's
.netdev and a .network per slave, but writes no `[Bond]` section: OPTIONS are read and
dropped, so `mode=active-backup,miimon=100` gives the kernel's defaults (balance-rr)
instead. OPTIONS are the bonding driver's own names (its module parameters, which
dracut passes through sysfs); networkd names them differently. A script of the network
feature runs after the generator and before networkd, finds the .netdev the generator
wrote for the bond and gives it a drop-in with the options as networkd's keys; `primary=`
becomes `PrimarySlave=yes` in a drop-in of that slave's .network. An option networkd has
no key for is named on the console and left out.

The script is generated from BOND_OPTIONS, so the table is the one place a mapping lives.
"""

from __future__ import annotations

from dataclasses import dataclass

BOND_SCRIPT = "/usr/lib/bookend/network-bond-options"
BOND_UNIT = "bookend-network-bond-options.service"
DROPIN = "50-bookend-bond.conf"


@dataclass(frozen=True)
class BondOption:
    key: str  # networkd's [Bond] key
    unit: str = ""  # appended to the driver's number: "ms" where the driver counts ms
    names: tuple[str, ...] = ()  # the driver's numbered values, by number


# The bonding driver's modes, by number.
MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb",
         "balance-alb")  # fmt: skip

BOND_OPTIONS: dict[str, BondOption] = {
    "mode": BondOption("Mode", names=MODES),
    "miimon": BondOption("MIIMonitorSec", "ms"),
    "updelay": BondOption("UpDelaySec", "ms"),
    "downdelay": BondOption("DownDelaySec", "ms"),
    "arp_interval": BondOption("ARPIntervalSec", "ms"),
    # Several targets: separated by ";" on the command line (a "," ends the option).
    "arp_ip_target": BondOption("ARPIPTargets"),
    "xmit_hash_policy": BondOption(
        "TransmitHashPolicy", names=("layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4")
    ),
    "lacp_rate": BondOption("LACPTransmitRate", names=("slow", "fast")),
    "ad_select": BondOption("AdSelect", names=("stable", "bandwidth", "count")),
    "fail_over_mac": BondOption("FailOverMACPolicy", names=("none", "active", "follow")),
    "primary_reselect": BondOption("PrimaryReselectPolicy", names=("always", "better", "failure")),
    "arp_validate": BondOption("ARPValidate", names=("none", "active", "backup", "all")),
    "arp_all_targets": BondOption("ARPAllTargets", names=("any", "all")),
    "all_slaves_active": BondOption("AllSlavesActive"),
    "min_links": BondOption("MinLinks"),
    "resend_igmp": BondOption("ResendIGMP"),
    "packets_per_slave": BondOption("PacketsPerSlave"),
    "num_grat_arp": BondOption("GratuitousARP"),
    "num_unsol_na": BondOption("GratuitousARP"),
    "lp_interval": BondOption("LearnPacketIntervalSec", "s"),
    "tlb_dynamic_lb": BondOption("DynamicTransmitLoadBalancing"),
    "ad_actor_sys_prio": BondOption("AdActorSystemPriority"),
    "ad_user_port_key": BondOption("AdUserPortKey"),
    "ad_actor_system": BondOption("AdActorSystem"),
}

SCRIPT_TEMPLATE = """\
#!/bin/sh
# Written by bookend: bond=NAME:SLAVES:OPTIONS[:MTU]'s OPTIONS (the bonding driver's
# names) as networkd's [Bond] keys, in a drop-in of the .netdev systemd-network-generator
# wrote for the bond (it leaves the options out). BOOKEND_CMDLINE, BOOKEND_NETWORK_DIR
# and BOOKEND_KMSG name other files (for tests).
set -f
cmdline=
IFS= read -r cmdline < "${BOOKEND_CMDLINE:-/proc/cmdline}" || [ -n "$cmdline" ] || exit 0
netdir=${BOOKEND_NETWORK_DIR:-/run/systemd/network}
kmsg=${BOOKEND_KMSG:-/dev/kmsg}
say() { echo "<$1>bookend-network-bond-options: $2" > "$kmsg"; }

# The file of netdir with suffix $1 that names interface $2 (a line "Name=$2").
named() {
    set +f  # the one glob
    set -- "$2" "$netdir"/*."$1"
    set -f
    name=$1
    shift
    for file in "$@"; do
        [ -e "$file" ] || continue
        while IFS= read -r text; do
            [ "$text" = "Name=$name" ] && { echo "$file"; return 0; }
        done < "$file"
    done
    return 1
}

# One driver option (KEY=VALUE) as networkd's line; nothing, and a warning, for others.
bond_line() {
    key=${1%%=*} value=${1#*=} unit= names=
    case "$key" in
@CASES@
        *) say 4 "bond $bond: networkd has no key for option '$1'; left out"; return 0 ;;
    esac
    case "$value" in
        *[!0-9]*|'') ;;
        *) number=0
           for name in $names; do
               [ "$number" = "$value" ] && { value=$name; break; }
               number=$((number + 1))
           done
           value=$value$unit ;;
    esac
    [ "$key" != ARPIPTargets ] || { IFS=';'; set -- $value; unset IFS; value="$*"; }
    echo "$key=$value"
}

primary_slave() {  # $1: the slave's name
    network=$(named network "$1") || {
        say 4 "bond $bond: no .network for primary slave $1; primary left out"
        return 0
    }
    mkdir -p "$network.d"
    printf '%s\\n' "# Written by bookend from bond=...primary=$1" "[Network]" \\
        "PrimarySlave=yes" > "$network.d/@DROPIN@"
}

for word in $cmdline; do
    case "$word" in bond=*:*:?*) ;; *) continue ;; esac
    IFS=:; set -- ${word#bond=}; unset IFS
    bond=${1:-bond0} options=$3
    [ -n "$options" ] || continue
    netdev=$(named netdev "$bond") || {
        say 3 "bond $bond: systemd-network-generator wrote no .netdev; options not applied"
        continue
    }
    mkdir -p "$netdev.d"
    IFS=,; set -- $options; unset IFS
    {
        echo "# Written by bookend from the kernel command line's bond=$bond:...:$options"
        echo "[Bond]"
        for option in "$@"; do
            case "$option" in
                primary=*) primary_slave "${option#primary=}" ;;
                *=*) bond_line "$option" ;;
                *) say 4 "bond $bond: option '$option' has no value; left out" ;;
            esac
        done
    } > "$netdev.d/@DROPIN@"
done
exit 0
"""

BOND_UNIT_TEXT = f"""\
[Unit]
Description=Give networkd the options of bond= on the kernel command line
DefaultDependencies=no
ConditionKernelCommandLine=bond
After=systemd-network-generator.service
Before=systemd-networkd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {BOND_SCRIPT}
"""


def _case(driver: str, option: BondOption) -> str:
    names = " ".join(option.names)
    return f"        {driver}) key={option.key} unit={option.unit} names='{names}' ;;"


def bond_options_script() -> str:
    """The script, its case statement made from BOND_OPTIONS."""
    cases = "\n".join(_case(driver, option) for driver, option in BOND_OPTIONS.items())
    return SCRIPT_TEMPLATE.replace("@CASES@", cases).replace("@DROPIN@", DROPIN)
