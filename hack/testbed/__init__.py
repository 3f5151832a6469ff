"""A real Kubernetes test bed built and started by the project itself.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the Go module
proxy, a throwaway PostgreSQL, and a pod executor that plays the node. See README.md.
"""

from testbed.bed import Bed, BedOptions
from testbed.errors import BedError
from testbed.waiting import wait_for

__all__ = ["Bed", "BedError", "BedOptions", "wait_for"]
