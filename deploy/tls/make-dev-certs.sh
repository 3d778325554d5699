#!/usr/bin/env bash
# Makes a development CA and certificates for splitserve (openssl). Not for production.
#
#   bash deploy/tls/make-dev-certs.sh OUT_DIR [SAN ...]
#
# OUT_DIR gets ca.pem (trust this), server.pem/server-key.pem (both tiers' ports), and
# client.pem/client-key.pem (the tokenizer tier's certificate towards generators; also usable
# by API clients when the public port requires mutual TLS). SANs default to
# DNS:localhost IP:127.0.0.1; add the names the servers are reached by, e.g. DNS:generator.
set -euo pipefail

out=${1:?usage: make-dev-certs.sh OUT_DIR [SAN ...]}
shift
sans=("$@")
[ ${#sans[@]} -gt 0 ] || sans=(DNS:localhost IP:127.0.0.1)
san_list=$(IFS=,; echo "${sans[*]}")
days=${DAYS:-365}

mkdir -p "$out"
umask 077  # private keys readable by their owner only
cd "$out"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=splitserve dev CA" -keyout ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() {  # name, common name, extended key usage, subjectAltName (optional)
  local name=$1 cn=$2 eku=$3 san=${4:-}
  local ext
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" \
    -extfile "$ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

issue server "splitserve server" serverAuth "$san_list"
issue client "splitserve tokenizer tier" clientAuth
rm -f ca.srl
chmod 644 ca.pem server.pem client.pem
echo "wrote $(pwd): ca.pem, server.pem, server-key.pem, client.pem, client-key.pem (SAN $san_list)"
