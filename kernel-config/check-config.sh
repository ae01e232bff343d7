#!/bin/sh
# Usage: check-config.sh CONFIG_FILE
# Verifies a kernel .config against kernel-config/required-symbols.txt:
#   CONFIG_X=v              -> the .config must contain exactly CONFIG_X=v
#   # CONFIG_X is not set   -> CONFIG_X must not be enabled (absent, "is not set" or =n)
# Prints one line per violation and exits 1 if there is any, else exits 0.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
required=${REQUIRED_SYMBOLS:-$here/required-symbols.txt}
config=${1:?usage: check-config.sh CONFIG_FILE}
[ -r "$config" ] || { echo "check-config: cannot read $config" >&2; exit 2; }

fail=0
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
    "# CONFIG_"*" is not set")
        sym=${line#\# }
        sym=${sym%% is not set}
        actual=$(grep -E "^${sym}=" "$config" || true)
        case $actual in
        "" | "${sym}=n") ;;
        *) echo "check-config: $sym must not be set, found: $actual"; fail=1 ;;
        esac
        ;;
    CONFIG_*=*)
        sym=${line%%=*}
        if ! grep -qxF "$line" "$config"; then
            actual=$(grep -E "^${sym}=|^# ${sym} is not set" "$config" || true)
            echo "check-config: $sym: want ${line#*=}, found: ${actual:-<absent>}"
            fail=1
        fi
        ;;
    "" | "#"*) ;;
    *) echo "check-config: bad line in $required: $line" >&2; exit 2 ;;
    esac
done < "$required"

if [ "$fail" -ne 0 ]; then
    echo "check-config: $config does not satisfy $required" >&2
    exit 1
fi
exit 0
