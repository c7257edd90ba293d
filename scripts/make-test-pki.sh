#!/usr/bin/env bash
# Makes a test PKI for the DTLS listener's certificate mode (docs/dtls.md):
# a CA, a server certificate and key for the gateway, and one client certificate
# and key per endpoint name given, with CN = the endpoint name (what the gateway
# requires when the listener has a cafile). Every key is ECDSA P-256.
#
#   scripts/make-test-pki.sh [-o DIR] [-d DAYS] [-s NAME]... [ENDPOINT...]
#
#   -o DIR    where the files go (default etc/certs; created if missing)
#   -d DAYS   validity of new certificates (default 365)
#   -s NAME   another DNS name or IP address for the server certificate, besides
#             localhost and 127.0.0.1 (repeatable)
#   ENDPOINT  endpoint names to make client certificates for (default: dev1)
#
# Files in DIR:
#   ca.pem, ca.key               the CA (cafile of the listener; -R of coap-client)
#   server.pem, server.key       the gateway's certificate and key (certfile, keyfile)
#   <endpoint>.pem, .key         a device's certificate and key (-c and -j of coap-client)
#
# An existing CA and server certificate in DIR are kept and reused, so running the
# script again with new endpoint names only adds their client certificates; an
# existing client certificate is kept too. Delete DIR to start over.
#
# This is for testing: the keys are written unencrypted. Do not use them in
# production, and do not commit them.
set -euo pipefail

dir=etc/certs
days=365
server_names=()
while getopts "o:d:s:h" opt; do
    case "$opt" in
        o) dir=$OPTARG ;;
        d) days=$OPTARG ;;
        s) server_names+=("$OPTARG") ;;
        h) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: $0 [-o DIR] [-d DAYS] [-s NAME]... [ENDPOINT...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || set -- dev1

command -v openssl >/dev/null || { echo "$0: the openssl command is needed (Debian: apt-get install openssl)" >&2; exit 1; }
case "$days" in ''|*[!0-9]*) echo "$0: -d takes a number of days, got '$days'" >&2; exit 2 ;; esac
for ep in "$@"; do
    case "$ep" in
        ''|*/*|*+*|*'#'*|*\\*|*,*|*=*)
            echo "$0: '$ep' is not usable as an endpoint name here (no '/', '+', '#', '\\', ',' or '=')" >&2
            exit 2 ;;
        ca|server)
            echo "$0: '$ep' would overwrite the file of the CA or the server; choose another name" >&2
            exit 2 ;;
    esac
done

mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Private keys are readable by their owner only.
newkey() { (umask 077 && openssl ecparam -genkey -name prime256v1 -noout -out "$1"); }

# The CA.
if [ -f "$dir/ca.pem" ] && [ -f "$dir/ca.key" ]; then
    echo "keeping the CA in $dir/ca.pem"
else
    newkey "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=lwm2m-gateway test CA" \
        -days "$days" -out "$dir/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    echo "made the CA: $dir/ca.pem, $dir/ca.key"
fi

# Signs the request $1 with the CA into $2, with the extensions in file $3.
sign() {
    openssl x509 -req -in "$1" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$3" -out "$2" 2>/dev/null
}

# The gateway's certificate.
if [ -f "$dir/server.pem" ] && [ -f "$dir/server.key" ]; then
    echo "keeping the server certificate in $dir/server.pem"
else
    san="DNS:localhost,IP:127.0.0.1"
    for n in "${server_names[@]+"${server_names[@]}"}"; do
        if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+=",IP:$n"; else san+=",DNS:$n"; fi
    done
    newkey "$dir/server.key"
    openssl req -new -key "$dir/server.key" -subj "/CN=localhost" -out "$tmp/server.csr"
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectAltName=$san" > "$tmp/server.ext"
    sign "$tmp/server.csr" "$dir/server.pem" "$tmp/server.ext"
    echo "made the server certificate: $dir/server.pem, $dir/server.key ($san)"
fi

# One client certificate per endpoint name.
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=clientAuth" > "$tmp/client.ext"
for ep in "$@"; do
    if [ -f "$dir/$ep.pem" ] && [ -f "$dir/$ep.key" ]; then
        echo "keeping the client certificate in $dir/$ep.pem"
        continue
    fi
    newkey "$dir/$ep.key"
    openssl req -new -key "$dir/$ep.key" -subj "/CN=$ep" -out "$tmp/client.csr"
    sign "$tmp/client.csr" "$dir/$ep.pem" "$tmp/client.ext"
    echo "made the client certificate of endpoint $ep (CN=$ep): $dir/$ep.pem, $dir/$ep.key"
done
