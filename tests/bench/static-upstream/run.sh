#!/bin/sh
# run.sh - a static upstream that cannot be the bottleneck of a benchmark: nginx (Debian's
# package) serving llama-server answers pre-rendered from tests/fixtures/llama-server/.
#
#   run.sh start DIR [PORT] [CHUNKS]   writes DIR/nginx.conf and the answers, starts nginx on
#                                      127.0.0.1:PORT (default or 0: a free port); prints the
#                                      two bases and writes the port to DIR/port
#   run.sh stop DIR                    stops that nginx (by its pid file)
#
# Bases: http://127.0.0.1:PORT/json/v1 answers every POST /chat/completions with one complete
# JSON answer; http://127.0.0.1:PORT/sse/v1 with a stream of CHUNKS (default 4000) chunks.
# /props, /slots, /health and /v1/models sit beside each base, as anthroxy derives them.
# A POST to a static file is a 405 in nginx; `error_page 405 =200 $uri` serves the file instead.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PORT] [CHUNKS]" >&2; exit 2; }

case "$cmd" in
start)
    port=${3:-0}
    if [ "$port" = 0 ]; then
        port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
    fi
    chunks=${4:-4000}
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
        echo "installing nginx (Debian package)" >&2
        if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends nginx >&2 ||
            { $sudo apt-get update >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends nginx >&2; }
    fi
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    mkdir -p "$dir/www" "$dir/tmp"
    dir=$(cd "$dir" && pwd)
    node "$here/render.mjs" "$dir/www" "$chunks"
    # As root, nginx's workers would run as www-data, who may not enter a private temp dir.
    user=""
    [ "$(id -u)" = 0 ] && user="user root root;"
    cat > "$dir/nginx.conf" <<CONF
$user
daemon on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;
    types { }
    default_type "application/json; charset=utf-8";
    server {
        listen 127.0.0.1:$port backlog=4096;
        root $dir/www;
        error_page 405 =200 \$uri;
        location /sse/v1/chat/ { default_type text/event-stream; }
        location / { }
    }
}
CONF
    "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    echo "$port" > "$dir/port"
    echo "static upstream: http://127.0.0.1:$port/json/v1 (complete answers), http://127.0.0.1:$port/sse/v1 ($chunks-chunk streams); pid $(cat "$dir/nginx.pid")"
    ;;
stop)
    if [ -f "$dir/nginx.pid" ]; then
        kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
        rm -f "$dir/nginx.pid"
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR [PORT] [CHUNKS]" >&2; exit 2 ;;
esac
