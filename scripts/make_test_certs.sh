#!/usr/bin/env bash
# Makes a throwaway PKI for tests (and shows the openssl commands docs/RUNTIME.md
# describes): in DIR,
#   ca.pem ca.key                 the cluster's CA
#   foreign-ca.pem foreign-ca.key another CA (its certificates must be refused)
#   coordinator.pem/.key, worker.pem/.key, client.pem/.key   signed by ca
#   foreign.pem/.key              signed by foreign-ca
# Every leaf has subjectAltName IP:127.0.0.1, DNS:localhost and both serverAuth and
# clientAuth (one certificate serves and calls). EC P-256 keys (fast), valid 2 days,
# keys mode 0600.
#   make_test_certs.sh DIR
set -euo pipefail
DIR="${1:?usage: make_test_certs.sh DIR}"
mkdir -p "$DIR"
cd "$DIR"
umask 077
EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
ca() {  # ca NAME CN
  openssl req -x509 "${EC[@]}" -keyout "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
leaf() {  # leaf NAME CA
  openssl req "${EC[@]}" -keyout "$1.key" -out "$1.csr" -subj "/CN=mesa-$1" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca "Mesa test CA"
ca foreign-ca "Some other CA"
for n in coordinator worker client; do leaf "$n" ca; done
leaf foreign foreign-ca
chmod 644 ./*.pem
chmod 600 ./*.key
