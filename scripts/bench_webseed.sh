#!/usr/bin/env bash
# Web-seed throughput (not part of CI): `hyperblow download` of a 1 GiB single-file torrent from an
# nginx web seed alone on 127.0.0.1, over plain HTTP and over HTTPS; each run 5 times, median MB/s.
#
#   scripts/bench_webseed.sh [SIZE_MIB] [RUNS]      (defaults: 1024 MiB, 5 runs)
#
# Everything lives in one temp dir, under /dev/shm when it has room (so the disk is not measured):
# the data, nginx's prefix and config (started with -p/-c/-e, `master_process off`, so the one nginx
# process serves the files as the user that runs this, and stopping its PID stops it), a test CA and
# server certificate made with openssl (trusted through SSL_CERT_FILE), the torrent made by
# `hyperblow create --web-seed`, and each run's download directory (removed after the run).
# Needs: nginx (Debian's /usr/sbin/nginx), openssl, bc, cargo; curl (optional) gives a baseline;
# GNU time (/usr/bin/time, optional) gives Hyperblow's CPU seconds per run (user + system), a figure
# the machine's load barely moves, unlike MB/s.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-1024}
RUNS=${2:-5}
NGINX=${NGINX:-/usr/sbin/nginx}

cargo build --release -q -p hyperblow-cli
HB=$PWD/target/release/hyperblow

base=/tmp
if [ -d /dev/shm ] && [ "$(df -Pm /dev/shm | awk 'NR==2 {print $4}')" -gt $((SIZE_MIB * 3)) ]; then
  base=/dev/shm
fi
dir=$(mktemp -d "$base/hb-webseed-bench.XXXXXX")
nginx_pid=
cleanup() {
  if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

mkdir -p "$dir/www" "$dir/tmp"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$dir/www/bench.bin"

# A test CA and a server certificate for 127.0.0.1 signed by it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$dir/ext.cnf"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 1 -extfile "$dir/ext.cnf" -out "$dir/server.crt" 2>/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(port)
HTTPS_PORT=$(port)
cat > "$dir/nginx.conf" <<EOF
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/tmp;
    fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp;
    scgi_temp_path $dir/tmp;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        location / { root $dir/www; }
    }
    server {
        listen 127.0.0.1:$HTTPS_PORT ssl;
        ssl_certificate $dir/server.crt;
        ssl_certificate_key $dir/server.key;
        location / { root $dir/www; }
    }
}
EOF
"$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" &
nginx_pid=$!
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$HTTPS_PORT") 2>/dev/null && break
  sleep 0.1
done

TIME=()
[ -x /usr/bin/time ] && TIME=(/usr/bin/time -f '%U %S' -o "$dir/cpu")

bench() { # name url
  local name=$1 url=$2 rates=() cpus=()
  "$HB" create -o "$dir/$name.torrent" --piece-length 1048576 --no-date --web-seed "$url" \
    "$dir/www/bench.bin" >/dev/null
  for i in $(seq "$RUNS"); do
    rm -rf "$dir/out"
    mkdir -p "$dir/out"
    local t0 t1
    t0=$(date +%s.%N)
    SSL_CERT_FILE=$dir/ca.pem "${TIME[@]}" "$HB" download -q -o "$dir/out" --bind 127.0.0.1 \
      "$dir/$name.torrent" >/dev/null 2>"$dir/err.log" || { cat "$dir/err.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    cmp -s "$dir/out/bench.bin" "$dir/www/bench.bin" || { echo "$name run $i: content differs" >&2; exit 1; }
    rates+=("$(echo "$SIZE_MIB * 1048576 / ($t1 - $t0) / 1000000" | bc -l)")
    local cpu=""
    if [ "${#TIME[@]}" -gt 0 ]; then
      cpus+=("$(awk '{print $1 + $2}' "$dir/cpu")")
      cpu=$(printf ', %.2f CPU-s' "${cpus[-1]}")
    fi
    printf '%s run %d: %.0f MB/s%s\n' "$name" "$i" "${rates[-1]}" "$cpu"
  done
  if [ "${#cpus[@]}" -gt 0 ]; then
    printf '%s\n' "${cpus[@]}" | sort -g | awk -v n="$name" \
      '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%s: median %.2f CPU-s (user + system) per download\n", n, m}'
  fi
  # The same file with curl (no hashing, one connection), interleaved: the ceiling under this load.
  if command -v curl >/dev/null 2>&1; then
    local base=()
    for i in $(seq "$RUNS"); do
      rm -rf "$dir/out"
      mkdir -p "$dir/out"
      local b0 b1
      b0=$(date +%s.%N)
      curl -s --cacert "$dir/ca.pem" -o "$dir/out/bench.bin" "${url}bench.bin"
      b1=$(date +%s.%N)
      base+=("$(echo "$SIZE_MIB * 1048576 / ($b1 - $b0) / 1000000" | bc -l)")
    done
    printf '%s\n' "${base[@]}" | sort -g | awk -v n="$name" \
      '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%s: curl baseline median %.0f MB/s\n", n, m}'
  fi
  printf '%s\n' "${rates[@]}" | sort -g | awk -v n="$name" -v s="$SIZE_MIB" \
    '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%s: median %.0f MB/s over %d runs (%d MiB)\n", n, m, NR, s}'
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
bench http "http://127.0.0.1:$HTTP_PORT/"
bench https "https://127.0.0.1:$HTTPS_PORT/"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
