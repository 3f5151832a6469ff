"""A platform team's install from `make release`'s dist/ alone, on the node bed: SHA256SUMS
hold, every SBOM names its image, the five OCI image archives are imported into the node's
containerd (and nothing else of the project's: only the node's own pause image comes from
the image cache), helm installs the packaged chart .tgz (never charts/), and a small study
on the chart's stock worker image reaches Succeeded in real containers, each pod running
the image whose digest dist/ holds.

Its own pytest run (`make test-release`): the node bed is one per session, and this one
must not hold the image cache's images of the same names.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.node.conftest import (
    RELEASE_NS,
    STUDY_NS,
    TAG,
    Kube,
    install_chart,
    running_node_bed,
)

from testbed.nodebed import PAUSE_IMAGE, image_archives
from testbed.paths import REPO_ROOT

DIST = Path(os.environ.get("DIST_DIR", REPO_ROOT / "dist"))  # as hack/release.sh
REMEDY = "run `make release` (it writes dist/)"
CHART_PACKAGE = f"optuna-operator-{TAG}.tgz"
CRD_BUNDLE = f"optuna-operator-crds-{TAG}.yaml"
# Each image of the release and a package its SBOM must list.
IMAGES = {
    "operator": f"pkg:pypi/optuna-operator@{TAG}",
    "worker": f"pkg:pypi/optuna-operator@{TAG}",
    "worker-examples": f"pkg:pypi/optuna-operator@{TAG}",
    "dashboard": "pkg:pypi/optuna-dashboard@",
    "pgbouncer": "pkg:deb/debian/pgbouncer@",
}
STUDY = "from-dist"
TRIALS = 4


@dataclass(frozen=True)
class DistImage:
    name: str  # ghcr.io/optuna-operator/<key>:<TAG>, what the chart's defaults name
    archive: Path
    manifest: str  # sha256:... of the image manifest
    config: str  # sha256:... of its config: the image ID the kubelet reports

    def is_running_in(self, status: dict[str, Any]) -> bool:
        return status.get("imageID", "").rsplit("@", 1)[-1] in (self.manifest, self.config)


def read_archive(archive: Path) -> tuple[str, str, str]:
    """An OCI archive's one reference name, manifest digest and config digest."""
    with tarfile.open(archive) as tar:

        def blob(path: str) -> dict[str, Any]:
            member = tar.extractfile(path)
            assert member is not None, f"{archive}: no {path}"
            return dict(json.load(member))

        (manifest,) = blob("index.json")["manifests"]
        digest = manifest["digest"]
        config = blob(f"blobs/sha256/{digest.removeprefix('sha256:')}")["config"]["digest"]
    return manifest["annotations"]["org.opencontainers.image.ref.name"], digest, config


@pytest.fixture(scope="module")
def dist() -> dict[str, DistImage]:
    """dist/ complete for this version, its checksums verified; the images it holds."""
    sbom = {key: f"{key}-{TAG}.sbom.cdx.json" for key in IMAGES}
    archive = {key: f"{key}-{TAG}.oci.tar" for key in IMAGES}
    expected = {CHART_PACKAGE, CRD_BUNDLE, *sbom.values(), *archive.values()}
    sums = DIST / "SHA256SUMS"
    if not sums.is_file():
        pytest.fail(f"{sums} is missing: {REMEDY}")
    listed = {line.split(maxsplit=1)[1].lstrip("*") for line in sums.read_text().splitlines()}
    if listed != expected:
        pytest.fail(
            f"{sums} lists {sorted(listed)}, not release {TAG}'s {sorted(expected)}: {REMEDY}"
        )
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"],
        cwd=DIST, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if check.returncode != 0:
        pytest.fail(f"sha256sum -c {sums} failed:\n{check.stdout}{check.stderr}{REMEDY}")
    images = {}
    for key in IMAGES:
        ref, manifest, config = read_archive(DIST / archive[key])
        images[key] = DistImage(ref, DIST / archive[key], manifest, config)
    return images


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, dist: dict[str, DistImage]) -> Iterator[Kube]:
    """The node bed's containerd holds dist/'s images and the node's pause image, no other."""
    archives = [*image_archives("pause"), *(image.archive for image in dist.values())]
    with running_node_bed(tmp_path_factory, archives, REMEDY) as bed:
        yield Kube(bed)


@pytest.fixture(scope="module")
def release(kube: Kube) -> str:
    return install_chart(kube, DIST / CHART_PACKAGE)


@pytest.fixture(scope="module")
def finished(kube: Kube, release: str) -> dict[str, Any]:
    """A small study on the chart's stock worker image (the study names none), finished."""
    manifest = textwrap.dedent(
        f"""\
        apiVersion: tuning.optuna-operator.io/v1alpha1
        kind: TuningStudy
        metadata:
          name: {STUDY}
        spec:
          directions: [minimize]
          objective:
            command: [python3, -c, "print('optuna:result', ({{x}} - 2) ** 2)"]
            searchSpace:
              - name: x
                float: {{low: -4.0, high: 4.0}}
          budget: {{trials: {TRIALS}}}
          sampler: {{type: TPE, seed: 7}}
          workers:
            parallelism: 2
          dashboard:
            enabled: true
        """
    )
    kube.kubectl("apply", "-n", STUDY_NS, "-f", "-", stdin=manifest)

    def done() -> dict[str, Any] | None:
        status = kube.get("ts", STUDY, "-n", STUDY_NS).get("status") or {}
        return dict(status) if status.get("phase") in ("Succeeded", "Failed") else None

    return dict(kube.wait_for(done, f"study {STUDY} to finish", 480))


def test_every_sbom_names_its_image_and_lists_its_packages(dist: dict[str, DistImage]) -> None:
    for key, package in IMAGES.items():
        sbom = json.loads((DIST / f"{key}-{TAG}.sbom.cdx.json").read_text())
        assert sbom["bomFormat"] == "CycloneDX"
        assert sbom["metadata"]["component"]["name"] == dist[key].name
        purls = [c["purl"] for c in sbom["components"]]
        assert any(p.startswith(package) for p in purls), (key, package)


def test_the_images_are_named_as_the_packaged_chart_expects(dist: dict[str, DistImage]) -> None:
    assert {key: image.name for key, image in dist.items()} == {
        key: f"ghcr.io/optuna-operator/{key}:{TAG}" for key in IMAGES
    }


def test_containerd_holds_dist_images_and_nothing_else_of_the_project(
    kube: Kube, dist: dict[str, DistImage]
) -> None:
    held = {}
    for line in kube.ctr("images", "ls").splitlines()[1:]:
        ref, _type, digest = line.split()[:3]
        if not ref.startswith("sha256:"):  # the CRI's own alias of an image ID
            held[ref] = digest
    assert held == {PAUSE_IMAGE: held.get(PAUSE_IMAGE)} | {
        image.name: image.manifest for image in dist.values()
    }


def test_the_chart_package_installs_the_crd_bundle(kube: Kube, release: str) -> None:
    bundle = [d for d in yaml.safe_load_all((DIST / CRD_BUNDLE).read_text()) if d]
    assert bundle, f"{CRD_BUNDLE} holds no CRD"
    for crd in bundle:
        served = kube.get("crd", crd["metadata"]["name"])["spec"]["versions"]
        versions = [(v["name"], v["served"], v["storage"]) for v in crd["spec"]["versions"]]
        assert [(v["name"], v["served"], v["storage"]) for v in served] == versions


def test_a_study_succeeds_on_the_released_images_in_real_containers(
    kube: Kube, dist: dict[str, DistImage], release: str, finished: dict[str, Any]
) -> None:
    assert finished["phase"] == "Succeeded", finished.get("conditions")
    assert finished["trials"]["complete"] == TRIALS, finished["trials"]
    assert finished["bestTrial"]["values"][0] < 36
    kube.wait_for(
        lambda: kube.kubectl(
            "get", "pods", "-n", STUDY_NS, "-l", "app.kubernetes.io/component=dashboard",
            "-o", "jsonpath={.items[*].status.containerStatuses[*].state.running}",
        ),
        "the study's dashboard to run",
        180,
    )  # fmt: skip
    by_name = {image.name: image for image in dist.values()}
    ran: dict[str, int] = {}
    for ns in (RELEASE_NS, STUDY_NS):
        for pod in kube.get("pods", "-n", ns)["items"]:
            for status in pod["status"].get("containerStatuses", []):
                image = by_name.get(status["image"])
                assert image, f"{pod['metadata']['name']} runs {status['image']}, not dist/'s"
                assert image.is_running_in(status), (status["imageID"], image)
                ran[image.name] = ran.get(image.name, 0) + 1
    # operator, PgBouncer, the namespace's dashboard and the workers of the study
    assert set(ran) == {dist[k].name for k in ("operator", "pgbouncer", "dashboard", "worker")}
