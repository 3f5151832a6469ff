// The pod sandbox's process: it holds the pod's namespaces, reaps zombies (the pod's
// PID 1 when the process namespace is shared) and exits on SIGINT or SIGTERM. Kubernetes'
// own pause is C (build/pause/linux/pause.c); this does the same with no C toolchain.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
