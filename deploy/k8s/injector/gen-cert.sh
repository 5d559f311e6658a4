#!/usr/bin/env bash
# gen-cert.sh: give the injector a TLS certificate without cert-manager.
#
# Makes a fresh CA and a server certificate for the injector's Service
# (resilience-injector.resilience-system.svc), stores the pair in the Secret
# resilience-injector-tls (the injector reloads it without a restart), and
# puts the CA into the caBundle of the MutatingWebhookConfiguration, keeping
# the previous CA beside it so that the API server keeps trusting the old
# certificate until the injector has loaded the new one. Run it again to
# renew (the server certificate lasts DAYS days, default 365).
#
# Needs openssl and kubectl (pointed at the cluster). The CA key never leaves
# a temporary directory that is removed at exit.
set -euo pipefail

NAMESPACE="${NAMESPACE:-resilience-system}"
SERVICE="${SERVICE:-resilience-injector}"
SECRET="${SECRET:-resilience-injector-tls}"
WEBHOOK="${WEBHOOK:-resilience-sidecar-injector}"
DAYS="${DAYS:-365}"
KUBECTL="${KUBECTL:-kubectl}"

for tool in openssl "$KUBECTL"; do
  command -v "$tool" >/dev/null || { echo "gen-cert.sh: $tool not found" >&2; exit 1; }
done

dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
dns="${SERVICE}.${NAMESPACE}.svc"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$((DAYS + 30))" \
  -subj "/CN=resilience-injector-ca" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=${dns}" -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.cluster.local\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
  "$dns" "$dns" >"$dir/ext.cnf"
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -days "$DAYS" -extfile "$dir/ext.cnf" -out "$dir/tls.crt" 2>/dev/null
openssl verify -CAfile "$dir/ca.crt" "$dir/tls.crt" >/dev/null

# The new CA first, then the first certificate of the current bundle, if any.
cp "$dir/ca.crt" "$dir/bundle.pem"
old="$("$KUBECTL" get mutatingwebhookconfiguration "$WEBHOOK" \
  -o jsonpath='{.webhooks[0].clientConfig.caBundle}' 2>/dev/null || true)"
if [ -n "$old" ]; then
  printf '%s' "$old" | base64 -d |
    awk '/-----BEGIN CERTIFICATE-----/{n++} n==1{print} /-----END CERTIFICATE-----/ && n==1{exit}' >>"$dir/bundle.pem"
fi
bundle="$(base64 <"$dir/bundle.pem" | tr -d '\n')"

"$KUBECTL" -n "$NAMESPACE" create secret tls "$SECRET" --cert="$dir/tls.crt" --key="$dir/tls.key" \
  --dry-run=client -o yaml | "$KUBECTL" apply -f -

patch=""
count="$("$KUBECTL" get mutatingwebhookconfiguration "$WEBHOOK" -o jsonpath='{range .webhooks[*]}x{end}')"
for ((i = 0; i < ${#count}; i++)); do
  patch="${patch:+$patch,}{\"op\":\"add\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$bundle\"}"
done
"$KUBECTL" patch mutatingwebhookconfiguration "$WEBHOOK" --type=json -p "[$patch]"

echo "gen-cert.sh: ${SECRET} in ${NAMESPACE} holds a certificate for ${dns}, valid ${DAYS} days;" \
  "${WEBHOOK} trusts its CA."
