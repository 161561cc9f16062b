#!/usr/bin/env bash
# Makes the secrets the manifests mount, with openssl: a CA, the server's certificate (for
# tapio-server.tapio-system, the name collectors dial, and its longer forms), the collectors'
# client certificate, three bearer tokens with their roles, and DIR/secrets.yaml holding four
# Secrets:
#
#   tapio-server-tls      tls.crt, tls.key, ca.crt  the server's certificate; ca.crt signs clients
#   tapio-collector-tls   tls.crt, tls.key, ca.crt  the collectors' certificate; ca.crt signs the server
#   tapio-server-tokens   tokens                    the server's --auth-token-file: every token and
#                                                   its role (one a line, docs/security.md)
#   tapio-collector-token token                     the one token collectors send
#
# The tokens, each also in its own file in DIR:
#
#   collector-token  role "collector", scoped to the collector ids COLLECTOR_IDS (comma-separated
#                    globs; default *-collector, the ids the DaemonSet's collectors take: one per
#                    node, <node-name>-collector): it may stream, and read nothing
#   reader-token     role "reader": the dashboard, /api/v1 and the query calls (Subscribe,
#                    ListEvents, ...); it may not stream
#   admin-token      role "admin": everything
#
# Collectors get only collector-token; reader-token and admin-token are for people and tools
# (kubectl port-forward, then Authorization: Bearer ...). They stay in DIR.
#
#   deploy/kubernetes/make-secrets.sh [--days N] [--cluster-domain DOMAIN] [--collector-ids GLOBS] DIR
#   kubectl apply -f DIR/secrets.yaml
#
# Run it again on the same DIR to renew the certificates: the CA and the tokens are kept (delete
# DIR/ca.key or DIR/*-token to replace them as well; a DIR/token of an older version of this script
# is kept as the collector token). DIR/ca.key signs certificates: keep it out of the cluster.
# cert-manager can make the two TLS secrets instead (same names, same keys).
set -euo pipefail

NAMESPACE=tapio-system
SERVICE=tapio-server
days=365
domain=cluster.local
collector_ids='*-collector'

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
    exit 2
}

dir=
while [ $# -gt 0 ]; do
    case "$1" in
        --days) days=${2:?--days needs a number}; shift 2 ;;
        --days=*) days=${1#*=}; shift ;;
        --cluster-domain) domain=${2:?--cluster-domain needs a domain}; shift 2 ;;
        --cluster-domain=*) domain=${1#*=}; shift ;;
        --collector-ids) collector_ids=${2?--collector-ids needs globs}; shift 2 ;;
        --collector-ids=*) collector_ids=${1#*=}; shift ;;
        -h|--help) usage ;;
        -*) echo "make-secrets.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$dir" ] || usage; dir=$1; shift ;;
    esac
done
[ -n "$dir" ] || usage
case "$days" in ''|*[!0-9]*) echo "make-secrets.sh: --days $days is not a number of days" >&2; exit 2 ;; esac
# one scope field of the token file: globs of id characters, comma-separated, no spaces
case "$collector_ids" in
    ''|,*|*,|*,,*|*[!A-Za-z0-9_.:*?,-]*)
        echo "make-secrets.sh: --collector-ids '$collector_ids' is not comma-separated id globs" \
            "(letters, digits, - _ . : * ?)" >&2
        exit 2 ;;
esac
command -v openssl >/dev/null || { echo "make-secrets.sh: needs openssl" >&2; exit 2; }

umask 077
mkdir -p "$dir"
cd "$dir"

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f ca.key ] || [ ! -f ca.crt ]; then
    new_key ca.key
    openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=tapio-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
    echo "new CA: $dir/ca.crt" >&2
fi

# sign NAME CN EXTENSIONS: NAME.key (new) and NAME.crt, signed by the CA for $days days
sign() {
    local name=$1 cn=$2 ext=$3
    new_key "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n%s\n' "$ext" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
        -days "$days" -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

sans="DNS:$SERVICE,DNS:$SERVICE.$NAMESPACE,DNS:$SERVICE.$NAMESPACE.svc,DNS:$SERVICE.$NAMESPACE.svc.$domain"
sign server "$SERVICE" "extendedKeyUsage=serverAuth
subjectAltName=$sans"
sign collector tapio-collector "extendedKeyUsage=clientAuth"
# the single token of older versions went to collectors: it stays theirs
[ -s collector-token ] || [ ! -s token ] || mv token collector-token
for role in collector reader admin; do
    [ -s "$role-token" ] || openssl rand -hex 32 >"$role-token"
done
{
    echo "# tapio-server --auth-token-file: TOKEN ROLE [SCOPE] (docs/security.md)"
    echo "$(cat collector-token) collector $collector_ids"
    echo "$(cat reader-token) reader"
    echo "$(cat admin-token) admin"
} >tokens

b64() { base64 -w0 <"$1"; }

# secret NAME TYPE KEY=FILE...: one Secret document
secret() {
    local name=$1 type=$2
    shift 2
    printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n' "$name" "$NAMESPACE"
    printf '  labels:\n    app.kubernetes.io/part-of: tapio\ntype: %s\ndata:\n' "$type"
    for pair in "$@"; do
        printf '  %s: %s\n' "${pair%%=*}" "$(b64 "${pair#*=}")"
    done
}

{
    echo "# Made by deploy/kubernetes/make-secrets.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ): kubectl apply -f this file"
    secret tapio-server-tls kubernetes.io/tls tls.crt=server.crt tls.key=server.key ca.crt=ca.crt
    secret tapio-collector-tls kubernetes.io/tls tls.crt=collector.crt tls.key=collector.key ca.crt=ca.crt
    secret tapio-server-tokens Opaque tokens=tokens
    secret tapio-collector-token Opaque token=collector-token
} >secrets.yaml

echo "wrote $dir/secrets.yaml (server certificate for $sans, valid $days days; collector token for" \
    "ids $collector_ids; reader and admin tokens in $dir/reader-token and $dir/admin-token)" >&2
