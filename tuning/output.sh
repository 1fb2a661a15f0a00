#!/bin/bash
# Output throughput: one job printing 200 MB, end to end, then its log read back.
# Usage: tuning/output.sh [path/to/hodei]   (default target/release/hodei)
set -euo pipefail
B=${1:-target/release/hodei}
D=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
"$B" up --data-dir "$D/data" --listen "127.0.0.1:$PORT" > "$D/up.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null; wait $UP 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 300); do [ -f "$D/data/admin.token" ] && break; sleep 0.1; done
H=(--server "127.0.0.1:$PORT" --ca "$D/data/ca.pem")
# Until both local agents are registered.
for _ in $(seq 300); do
  [ "$("$B" worker list "${H[@]}" 2>/dev/null | grep -c '^w')" -ge 2 ] && break; sleep 0.1
done
t0=$(date +%s.%N)
ID=$("$B" job submit "${H[@]}" --wait -- sh -c 'head -c 200000000 /dev/zero' | head -1)
t1=$(date +%s.%N)
BYTES=$("$B" job logs "${H[@]}" "$ID" | wc -c)
t2=$(date +%s.%N)
echo "job $ID: run and wait $(echo "$t1 - $t0" | bc) s; log read back ($BYTES bytes) $(echo "$t2 - $t1" | bc) s"
