"""`make release`'s chart part (hack/release.sh --chart-only): helm lint --strict and helm
template on every supported Kubernetes version, the package and the CRD bundle in dist/ with
their checksums. The image archives are left to `make release` (minutes of builds)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import yaml

from optuna_operator import __version__

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "optuna-operator"


def release(dist: Path, *env: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "hack" / "release.sh"), "--chart-only"],
        env={**os.environ, "DIST_DIR": str(dist), **dict(env)},
        capture_output=True,
        text=True,
        check=False,
    )


def test_release_checks_and_packages_the_chart(tmp_path: Path) -> None:
    out = release(tmp_path)
    assert out.returncode == 0, out.stderr
    for minor in range(30, 35):
        assert f"lint and template pass on Kubernetes 1.{minor}.0" in out.stderr
    package = tmp_path / f"optuna-operator-{__version__}.tgz"
    with tarfile.open(package) as tar:
        member = tar.extractfile("optuna-operator/Chart.yaml")
        assert member is not None
        chart = yaml.safe_load(member.read())
        names = set(tar.getnames())
    assert chart["version"] == chart["appVersion"] == __version__
    assert "optuna-operator/crds/tuning.optuna-operator.io_tuningstudies.yaml" in names
    assert "optuna-operator/files/admission-policy.yaml" in names
    bundle = tmp_path / f"optuna-operator-crds-{__version__}.yaml"
    kinds = {d["kind"] for d in yaml.safe_load_all(bundle.read_text()) if d}
    assert kinds == {"CustomResourceDefinition"}
    sums = dict(
        reversed(line.split("  ", 1)) for line in (tmp_path / "SHA256SUMS").read_text().splitlines()
    )
    assert set(sums) == {package.name, bundle.name}
    for name, digest in sums.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest, name


def test_release_refuses_a_kubernetes_version_the_chart_cannot_run_on(tmp_path: Path) -> None:
    # 1.29 has no admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy: kubeVersion
    # refuses it, so a matrix that includes it fails.
    out = release(tmp_path, ("KUBE_VERSIONS", "1.29.0"))
    assert out.returncode != 0
    assert "chart requires kubeVersion: >=1.30.0-0" in out.stderr
    assert "helm template --kube-version 1.29.0 failed" in out.stderr
    assert not list(tmp_path.iterdir())


def test_sbom_lists_the_debian_packages_and_python_distributions(tmp_path: Path) -> None:
    """What `make release` writes beside each image archive, from an unpacked filesystem."""
    root = tmp_path / "rootfs"
    dpkg = root / "var" / "lib" / "dpkg"
    dpkg.mkdir(parents=True)
    (dpkg / "status").write_text(
        "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n"
        "Version: 2.36-9+deb12u9\nDescription: GNU C Library\n shared libraries\n\n"
        "Package: removed\nStatus: deinstall ok config-files\nVersion: 1.0\n"
    )
    for site, name, version in (
        ("usr/lib/python3/dist-packages", "PyYAML", "6.0.2"),
        ("opt/optuna-operator/lib/python3.11/site-packages", "optuna_operator", "0.2.0"),
    ):
        info = root / site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    done = subprocess.run(
        [str(ROOT / "hack" / "release.sh"), "--sbom", str(root), "ghcr.io/x/worker:0.2.0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    bom = json.loads(done.stdout)
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.5")
    assert bom["metadata"]["component"] == {"type": "container", "name": "ghcr.io/x/worker:0.2.0"}
    assert [c["purl"] for c in bom["components"]] == [
        "pkg:pypi/pyyaml@6.0.2",
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=amd64",
        "pkg:pypi/optuna-operator@0.2.0",
    ]
