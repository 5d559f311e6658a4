// Package k8s holds the Kubernetes end-to-end tests of the sidecar injector:
// a real etcd and a real kube-apiserver on loopback, the real
// sidecar-injector binary registered as a mutating webhook by url:, and the
// admission policies of deploy/k8s applied as shipped. The package has no
// code of its own; see its tests and `make test-k8s`.
//
// The tests need etcd on PATH (scripts/ensure-etcd.sh) and the pinned
// kube-apiserver in .bin/ (scripts/build-kube-apiserver.sh); `make k8s-deps`
// installs both.
package k8s
