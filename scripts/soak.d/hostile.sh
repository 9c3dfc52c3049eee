# The --hostile run of scripts/soak, sourced by it once the lab, the misbehaving servers and the
# two proxies (pids[out], pids[rev]) are up: baselines, the load under watch.py, the checks.

readonly PROXIES=(out rev)
declare -A port=([out]=$PROXY_PORT [rev]=$REVERSE_PORT) table=([out]=ftp_proxy [rev]=ftp_proxy_rev)
declare -A fds_before=() fds_after=() rss_before=() alive=() listeners=() sockets=() elements=() health=()

# Warm-up through both proxies; the baselines are taken once they have gone idle.
driver --sessions 20 --concurrency 4 --seed 1 --only normal-get,rev-get --servers vsftpd --progress 0 >"$work/warmup.json"
sleep 2
for name in "${PROXIES[@]}"; do
  fds_before[$name]=$(fds "${pids[$name]}")
  rss_before[$name]=$(rss "${pids[$name]}")
done

stop_file=$work/stop
"$PY" "$HERE/watch.py" --out "$work/watch.json" --samples "$work/samples.log" --stop-file "$stop_file" \
  --kill-mib "$RSS_KILL_MIB" "out:${pids[out]}:$work/out.log" "rev:${pids[rev]}:$work/rev.log" &
sampler_pid=$!
say "lab $prefix, proxies out (pid ${pids[out]}) and rev (pid ${pids[rev]}), $backend, seed $seed: $minutes min, $concurrency sessions at a time"

load_started=$EPOCHREALTIME
driver --hostile --minutes "$minutes" --concurrency "$concurrency" --seed "$seed" --stop-file "$stop_file" \
  ${only:+--only "$only"} >"$work/driver.json"
load_ended=$EPOCHREALTIME

# A proxy's TCP sockets besides its control listener: "LISTENERS OTHERS" (relay listeners,
# then control and data connections: sessions and what they hold).
proxy_sockets() {
  ip netns exec "$ns_gw" ss -Htanp 2>/dev/null | awk -v pid="pid=$1," -v port=":$2" '
    index($0, pid) {
      if ($1 != "LISTEN") o++
      else if (substr($4, length($4) - length(port) + 1) != port) l++
    }
    END { print l + 0, o + 0 }'
}

# Once the load is over, every session must end and release what it held: a moment for the
# last teardowns (and the relay's lingering closes) first.
for name in "${PROXIES[@]}"; do
  pid=${pids[$name]}
  alive[$name]=no
  kill -0 "$pid" 2>/dev/null || continue
  alive[$name]=yes
  for ((i = 0; i < 150; i++)); do
    read -r listeners[$name] sockets[$name] < <(proxy_sockets "$pid" "${port[$name]}")
    ((listeners[$name] + sockets[$name] == 0)) && break
    sleep 0.2
  done
  elements[$name]=n/a
  if [[ $backend == nftables ]]; then
    for ((i = 0; i < 100; i++)); do
      elements[$name]=$(nft_elements "${table[$name]}")
      [[ ${elements[$name]} == 0 ]] && break
      sleep 0.1
    done
  fi
  for ((i = 0; i < 50; i++)); do
    fds_after[$name]=$(fds "$pid")
    ((fds_after[$name] <= fds_before[$name])) && break
    sleep 0.2
  done
done

# Both proxies still serve a normal session.
health[out]=$(driver --sessions 3 --concurrency 1 --seed 2 --only normal-get --servers vsftpd --progress 0 | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["ok"])' || echo 0)
health[rev]=$(driver --sessions 3 --concurrency 1 --seed 2 --only rev-get --progress 0 | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["ok"])' || echo 0)

stop_pid "$sampler_pid"
sampler_pid=

for name in "${PROXIES[@]}"; do
  printf '%s %s %s %s %s %s %s %s %s\n' "$name" "${alive[$name]}" "${rss_before[$name]}" "${fds_before[$name]}" \
    "${fds_after[$name]:--}" "${listeners[$name]:--}" "${sockets[$name]:--}" "${elements[$name]:--}" "${health[$name]}"
done >"$work/after.txt"

"$PY" "$HERE/report.py" --driver "$work/driver.json" --watch "$work/watch.json" --samples "$work/samples.log" \
  --after "$work/after.txt" --backend "$backend" --seed "$seed" --minutes "$minutes" --concurrency "$concurrency" \
  --load "$load_started" "$load_ended" --rss-limit-mib "$RSS_LIMIT_MIB" --kill-mib "$RSS_KILL_MIB" --elapsed "$(elapsed)"
