"""Users as a cluster has them, for tests of who may do what: a ServiceAccount's token in a
kubeconfig of its own (the bed's server and CA, no admin credential), bound to a role in one
namespace. The API server authenticates the token and authorizes every request as
`system:serviceaccount:NS:NAME`, as it would any user's."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client

from testbed.kubeconfig import read_kubeconfig

__all__ = ["token_user"]


def token_user(
    admin: client.ApiClient,
    admin_kubeconfig: Path,
    namespace: str,
    name: str,
    directory: Path,
    *,
    cluster_role: str | None = "view",
    role: str | None = None,
) -> Path:
    """A kubeconfig for the ServiceAccount NAME of NAMESPACE (created), bound there to the
    ClusterRole `cluster_role` or the Role `role`; its context's namespace is NAMESPACE."""
    core = client.CoreV1Api(admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    kind, ref = ("Role", role) if role else ("ClusterRole", cluster_role)
    client.RbacAuthorizationV1Api(admin).create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": f"{name}-{ref}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": ref},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    request = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    creds = read_kubeconfig(admin_kubeconfig)
    path = directory / f"{namespace}-{name}.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "bed",
                        "cluster": {
                            "server": creds.server,
                            "certificate-authority": str(creds.ca_cert),
                        },
                    }
                ],
                "users": [{"name": name, "user": {"token": request.status.token}}],
                "contexts": [
                    {
                        "name": name,
                        "context": {"cluster": "bed", "user": name, "namespace": namespace},
                    }
                ],
                "current-context": name,
            },
            sort_keys=False,
        )
    )
    path.chmod(0o600)
    return path
