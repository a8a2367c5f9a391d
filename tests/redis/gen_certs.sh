#!/bin/sh
# gen_certs.sh DIR — TLS material for the Redis TLS tests, made fresh at test
# time with the openssl CLI (nothing is checked in):
#   ca.crt/ca.key          the CA that signs the server and client certificates
#   server.crt/server.key  CN=localhost, SAN DNS:localhost, IP:127.0.0.1
#   client.crt/client.key  a client certificate for mutual TLS
#   other-ca.crt           an unrelated CA (the "wrong CA")
set -eu
dir=${1:?usage: gen_certs.sh DIR}
cd "$dir"
q() { "$@" >/dev/null 2>&1 || { echo "gen_certs.sh: $* failed" >&2; "$@"; exit 1; }; }

q openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj /CN=psrpc-test-ca \
    -keyout ca.key -out ca.crt
q openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj /CN=psrpc-other-ca \
    -keyout other-ca.key -out other-ca.crt

printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
q openssl req -newkey rsa:2048 -nodes -sha256 -subj /CN=localhost -keyout server.key \
    -out server.csr
q openssl x509 -req -sha256 -days 2 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -extfile server.ext -out server.crt

printf 'extendedKeyUsage=clientAuth\n' >client.ext
q openssl req -newkey rsa:2048 -nodes -sha256 -subj /CN=psrpc-test-client -keyout client.key \
    -out client.csr
q openssl x509 -req -sha256 -days 2 -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -extfile client.ext -out client.crt
chmod 600 ./*.key
