// Package inject is the Kubernetes sidecar injector of the resilience
// sidecar: a mutating admission webhook, run as `sidecar-injector`, that adds
// the sidecar to the Pods that ask for it.
//
// A Pod opts in with the annotation
//
//	resilience.seed-a88e5317.io/inject: "true"
//
// and the webhook answers its CREATE with a JSON patch that
//
//   - puts the sidecar first among the init containers as a native sidecar
//     (restartPolicy: Always, Kubernetes 1.29 or later), so it starts before
//     the other init containers and the app and stops after them, with gRPC
//     startup, liveness and readiness probes, resources and a locked-down
//     securityContext;
//   - sets SIDECAR_ADDR=127.0.0.1:<port> in every other container that does
//     not set it already;
//   - mounts the ConfigMap and the API token Secret named by annotations;
//   - marks the Pod with resilience.seed-a88e5317.io/status: injected;
//   - adds the Prometheus scrape annotations prometheus.io/scrape, port and
//     path for the sidecar's metrics, unless the Pod has an annotation under
//     prometheus.io/ of its own.
//
// The patch only adds: fields of the Pod that this package's k8s.io/api
// version does not know are kept as they are. A Pod that already has a
// container named [ContainerName] is left alone, so injecting twice changes
// nothing. A Pod whose annotations under [AnnotationPrefix] are wrong is
// rejected with a message naming each bad annotation; it is never admitted
// without the sidecar it asked for. Computing the answer does no I/O, so the
// webhook answers well within its timeout.
package inject
