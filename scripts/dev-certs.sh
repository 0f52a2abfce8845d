#!/usr/bin/env bash
# Makes a development CA and one certificate per region for link mutual TLS.
# Each region's certificate names the region in its subject alternative name,
# which is what the relays check.
#
#   scripts/dev-certs.sh [TOPOLOGY] [OUTDIR] [REGION...]
#
# Regions default to those named in TOPOLOGY (default Topology/local.yaml);
# files go to OUTDIR (default certs/): ca.pem, ca-key.pem, REGION.pem, REGION-key.pem.
set -euo pipefail
topology=${1:-Topology/local.yaml}
out=${2:-certs}
shift $(( $# > 2 ? 2 : $# ))
regions=("$@")
if [ ${#regions[@]} -eq 0 ]; then
  mapfile -t regions < <(sed -n 's/^[[:space:]]*-[[:space:]]*name:[[:space:]]*\([a-z0-9-]*\).*/\1/p' "$topology")
fi
[ ${#regions[@]} -gt 0 ] || { echo "dev-certs: no regions found in $topology" >&2; exit 1; }
command -v openssl >/dev/null || { echo "dev-certs: openssl is missing; run scripts/setup.sh" >&2; exit 1; }
mkdir -p "$out"
if [ ! -f "$out/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=tern development CA" -keyout "$out/ca-key.pem" -out "$out/ca.pem" 2>/dev/null
fi
for region in "${regions[@]}"; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$region" \
    -keyout "$out/$region-key.pem" -out "$out/$region.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$region" > "$out/$region.ext"
  openssl x509 -req -in "$out/$region.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial \
    -days 825 -extfile "$out/$region.ext" -out "$out/$region.pem" 2>/dev/null
  rm -f "$out/$region.csr" "$out/$region.ext"
  echo "dev-certs: $out/$region.pem"
done
