#!/bin/sh
# gen_certs.sh DIR — fresh TLS material for the NATS TLS tests, made with the
# openssl CLI at test time (nothing is checked in):
#   ca.crt ca.key            the CA that signs server and client certificates
#   server.crt server.key    CN=localhost, SAN DNS:localhost, IP:127.0.0.1
#   client.crt client.key    a client certificate for mutual TLS
#   other-ca.crt             an unrelated CA (the "wrong CA")
set -eu
dir=${1:?usage: gen_certs.sh DIR}
cd "$dir"
run() { "$@" >openssl.log 2>&1 || { echo "gen_certs.sh: $* failed:" >&2; cat openssl.log >&2; exit 1; }; }

run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 2 \
    -subj /CN=psrpc-nats-test-ca -keyout ca.key -out ca.crt
run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 2 \
    -subj /CN=psrpc-nats-other-ca -keyout other-ca.key -out other-ca.crt

printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
run openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -subj /CN=localhost -keyout server.key -out server.csr
run openssl x509 -req -sha256 -days 2 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -extfile server.ext -out server.crt

printf 'extendedKeyUsage=clientAuth\n' >client.ext
run openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -subj /CN=psrpc-nats-test-client -keyout client.key -out client.csr
run openssl x509 -req -sha256 -days 2 -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -extfile client.ext -out client.crt
chmod 600 ./*.key
