#!/usr/bin/env bash
# `make release`: what a platform team installs, into dist/ (gitignored), for the version in
# pyproject.toml (the one version source; the chart must carry the same):
#   optuna-operator-<version>.tgz          the chart (helm package), after helm lint --strict and
#                                          helm template for every Kubernetes version in
#                                          KUBE_VERSIONS, with the default and every ci/ values
#   optuna-operator-crds-<version>.yaml    the CRDs the chart installs, as one file
#   <image>-<version>.oci.tar              operator, worker, worker-examples, dashboard and
#                                          pgbouncer as OCI archives (buildah; not with --chart-only)
#   <image>-<version>.sbom.cdx.json        each image's SBOM (CycloneDX: its Debian packages and
#                                          Python distributions, read from its filesystem)
#   SHA256SUMS                             of everything above
#
# Usage: hack/release.sh [--chart-only]
#        hack/release.sh --sbom ROOTFS IMAGE-NAME   (the SBOM of an unpacked root filesystem)
# Environment:
#   DIST_DIR         where the files go (default: dist/ in the repository)
#   KUBE_VERSIONS    the matrix (default: 1.30.0 .. 1.34.0; the chart's kubeVersion is >=1.30)
#   BUILD_CA_BUNDLE  a CA bundle for pip inside the image builds (see hack/nodebed/build-images.sh)
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
chart=charts/optuna-operator
dist=${DIST_DIR:-$repo_root/dist}
kube_versions=${KUBE_VERSIONS:-1.30.0 1.31.0 1.32.0 1.33.0 1.34.0}
chart_only=false
[[ "${1:-}" == "--chart-only" ]] && chart_only=true

say() { printf '[release] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# A CycloneDX SBOM of a root filesystem from its package records alone (dpkg's status file,
# every *.dist-info/METADATA under usr/ and opt/), so it needs no scanner and nothing run in
# the image; sorted and without timestamps, so the same image gives the same file.
sbom() {
  python3 - "$1" "$2" <<'PY'
import email.parser, json, sys
from pathlib import Path
from urllib.parse import quote

root, image = Path(sys.argv[1]), sys.argv[2]
found = set()
status = root / "var/lib/dpkg/status"
for block in status.read_text(errors="replace").split("\n\n") if status.is_file() else []:
    fields = dict(l.split(": ", 1) for l in block.splitlines() if ": " in l and l[0] != " ")
    if fields.get("Status", "").endswith(" installed") and "Package" in fields:
        name, version = fields["Package"], fields.get("Version", "")
        arch = fields.get("Architecture", "all")
        found.add((name, version, f"pkg:deb/debian/{name}@{quote(version)}?arch={arch}"))
for base in ("usr", "opt"):
    for meta in (root / base).glob("**/*.dist-info/METADATA"):
        fields = email.parser.Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
        name, version = fields["Name"], fields["Version"]
        if name and version:
            found.add((name, version, f"pkg:pypi/{name.lower().replace('_', '-')}@{version}"))
components = [{"type": "library", "name": n, "version": v, "purl": p} for n, v, p in sorted(found)]
print(json.dumps({
    "bomFormat": "CycloneDX",
    "specVersion": "1.5",
    "version": 1,
    "metadata": {"component": {"type": "container", "name": image}},
    "components": components,
}, indent=1))
PY
}

if [[ "${1:-}" == "--sbom" ]]; then
  sbom "$2" "$3"
  exit
fi

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
chart_field() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$chart/Chart.yaml"; }
[[ "$(chart_field version)" == "$version" && "$(chart_field appVersion)" == "$version" ]] \
  || die "$chart/Chart.yaml: version and appVersion must be $version (pyproject.toml)"

helm="$(hack/build-binaries.sh --print)/helm"
[[ -x "$helm" ]] || die "the pinned helm is missing ($helm): run make binaries"

check_chart() {
  local kube values args
  for kube in $kube_versions; do
    for values in "" "$chart"/ci/*-values.yaml; do
      args=(--kube-version "$kube")
      [[ -n "$values" ]] && args+=(-f "$values")
      "$helm" lint --strict "$chart" "${args[@]}" >/dev/null \
        || die "helm lint --strict ${args[*]} failed: rerun it to see why"
      "$helm" template optuna-operator "$chart" -n optuna-system "${args[@]}" >/dev/null \
        || die "helm template ${args[*]} failed"
    done
    say "chart: lint and template pass on Kubernetes $kube (default and ci/ values)"
  done
  # The floor is real: below it Helm refuses, as it would at install.
  if "$helm" template optuna-operator "$chart" --kube-version 1.29.0 >/dev/null 2>&1; then
    die "the chart renders for Kubernetes 1.29, below what its admission policy needs"
  fi
}

package_chart() {
  mkdir -p "$dist"
  "$helm" package "$chart" --destination "$dist" >/dev/null
  local crds="$dist/optuna-operator-crds-$version.yaml" file
  : >"$crds"
  for file in "$chart"/crds/*.yaml; do
    { echo "---"; echo "# $(basename "$file")"; cat "$file"; } >>"$crds"
  done
  say "chart: $dist/optuna-operator-$version.tgz, $crds"
}

# name of each image, its Dockerfile and build target; the same files build-images.sh uses.
images=(
  "operator Dockerfile -"
  "worker worker_image/Dockerfile worker"
  "worker-examples worker_image/Dockerfile examples"
  "dashboard hack/nodebed/dashboard.Dockerfile -"
  "pgbouncer pgbouncer_image/Dockerfile -"
)

build_images() {
  command -v buildah >/dev/null || die "buildah is missing: hack/nodebed/install-packages.sh, or --chart-only"
  # common.sh: bah (niced buildah on the project's own storage), lock_images, the base's name.
  # shellcheck source=hack/nodebed/common.sh
  . hack/nodebed/common.sh
  hack/nodebed/build-base.sh
  local entry key dockerfile target name t0 args cid
  for entry in "${images[@]}"; do
    read -r key dockerfile target <<<"$entry"
    name="ghcr.io/optuna-operator/$key:$version"
    args=(bud --pull=false --layers=false --isolation chroot -f "$dockerfile" -t "$name"
      --build-arg "BASE_IMAGE=$BASE_IMAGE_NAME")
    [[ "$target" != - ]] && args+=(--target "$target")
    [[ -n "${BUILD_CA_BUNDLE:-}" ]] && args+=(--volume "$BUILD_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
    t0=$(date +%s)
    (
      lock_images  # one image build at a time on this machine, as build-images.sh does
      bah "${args[@]}" . >"$dist/$key.build.log" 2>&1 || { tail -20 "$dist/$key.build.log" >&2; exit 1; }
      bah push -q "$name" "oci-archive:$dist/$key-$version.oci.tar:$name" >/dev/null
      cid=$(bah from -q --pull=false "$name")
      sbom "$(bah mount "$cid")" "$name" >"$dist/$key-$version.sbom.cdx.json"
      bah umount "$cid" >/dev/null && bah rm "$cid" >/dev/null
      bah rmi -f "$name" >/dev/null 2>&1 || true
    ) || die "$name: build failed (log: $dist/$key.build.log)"
    rm -f "$dist/$key.build.log"
    say "image: $name in $(( $(date +%s) - t0 ))s, $(du -h "$dist/$key-$version.oci.tar" | cut -f1)"
  done
}

check_chart
package_chart
$chart_only || build_images
# Only this version's files: dist/ may still hold an earlier release's.
(cd "$dist" && find . -maxdepth 1 -type f -name "*-$version[.-]*" -printf '%f\n' | LC_ALL=C sort \
  | xargs sha256sum >SHA256SUMS)
say "release $version in $dist: $(wc -l <"$dist/SHA256SUMS") files and SHA256SUMS"
