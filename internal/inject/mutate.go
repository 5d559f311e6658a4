package inject

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Paths and names of what the injected container mounts.
const (
	configVolume    = "resilience-sidecar-config"
	configDir       = "/etc/resilience-sidecar"
	tokenVolume     = "resilience-sidecar-token"
	tokenDir        = "/var/run/secrets/resilience-sidecar"
	socketVolume    = "resilience-sidecar-socket"
	socketDir       = "/var/run/resilience-sidecar"
	grpcSocket      = socketDir + "/grpc.sock"
	httpSocket      = socketDir + "/http.sock"
	tokenEnv        = "SIDECAR_API_TOKEN_FILE" // read by the sidecar and by the four clients
	nonRootID       = 65532                    // the distroless "nonroot" user and group
	grpcPortName    = "sidecar-grpc"
	metricsPortName = "sidecar-metrics"
)

// alreadyInjected reports whether the Pod has a container or init container
// named ContainerName.
func alreadyInjected(spec *corev1.PodSpec) bool {
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range list {
			if c.Name == ContainerName {
				return true
			}
		}
	}
	return false
}

// conflicts lists what in the Pod stops the sidecar from being added as s
// describes, one message each; none means the patch is safe to apply.
func conflicts(spec *corev1.PodSpec, s settings) []string {
	var problems []string
	if spec.HostNetwork {
		problems = append(problems, "hostNetwork Pods are not supported: the sidecar would listen on the node's network")
	}
	if spec.OS != nil && spec.OS.Name != "" && spec.OS.Name != corev1.Linux {
		problems = append(problems, fmt.Sprintf("spec.os.name %q is not supported: the sidecar image is for linux", spec.OS.Name))
	}
	for _, list := range []struct {
		field string
		cs    []corev1.Container
	}{{"initContainers", spec.InitContainers}, {"containers", spec.Containers}} {
		for _, c := range list.cs {
			for _, p := range c.Ports {
				if p.ContainerPort == s.port || p.ContainerPort == s.metricsPort {
					problems = append(problems, fmt.Sprintf(
						"%s %q declares port %d, which the sidecar uses (choose other sidecar ports with %s and %s)",
						list.field, c.Name, p.ContainerPort, AnnotationPort, AnnotationMetricsPort))
				}
				if p.Name == grpcPortName || p.Name == metricsPortName {
					problems = append(problems, fmt.Sprintf("%s %q declares a port named %q, a name the sidecar uses",
						list.field, c.Name, p.Name))
				}
			}
		}
	}
	for _, list := range []struct {
		field string
		cs    []corev1.Container
	}{{"initContainers", spec.InitContainers}, {"containers", spec.Containers}} {
		for _, c := range list.cs {
			for _, m := range c.VolumeMounts {
				if s.unixSocket && m.MountPath == socketDir {
					problems = append(problems, fmt.Sprintf("%s %q mounts %q at %s, where the injector mounts the sidecar's sockets (%s)",
						list.field, c.Name, m.Name, m.MountPath, AnnotationUnixSocket))
				}
			}
		}
	}
	for _, ours := range sidecarVolumes(s) {
		for _, v := range spec.Volumes {
			if v.Name == ours.Name {
				problems = append(problems, fmt.Sprintf("volume %q already exists; the injector adds a volume of that name", v.Name))
			}
		}
	}
	return problems
}

// patchFor returns the JSON patch that injects the sidecar into the Pod, in
// an order where every path refers to the document as the earlier
// operations left it: environment and volumes first, then the sidecar at
// the head of the init containers (which shifts their indexes), then the
// annotations (podAnnotations).
func patchFor(pod *corev1.Pod, s settings, cfg Config) []patchOp {
	var ops []patchOp
	for _, list := range []struct {
		field string
		cs    []corev1.Container
	}{{"containers", pod.Spec.Containers}, {"initContainers", pod.Spec.InitContainers}} {
		for i, c := range list.cs {
			var env []corev1.EnvVar
			for _, e := range appEnv(s) {
				if !hasEnv(c.Env, e.Name) { // the app chose its own
					env = append(env, e)
				}
			}
			ops = appendAll(ops, c.Env == nil, env, "spec", list.field, strconv.Itoa(i), "env")
			ops = appendAll(ops, c.VolumeMounts == nil, appMounts(s, c.VolumeMounts), "spec", list.field, strconv.Itoa(i), "volumeMounts")
		}
	}

	volumes := sidecarVolumes(s)
	if len(volumes) > 0 {
		if pod.Spec.Volumes == nil {
			ops = append(ops, add(volumes, "spec", "volumes"))
		} else {
			for _, v := range volumes {
				ops = append(ops, add(v, "spec", "volumes", "-"))
			}
		}
	}

	sidecar := sidecarContainer(s, cfg)
	if pod.Spec.InitContainers == nil {
		ops = append(ops, add([]corev1.Container{sidecar}, "spec", "initContainers"))
	} else {
		ops = append(ops, add(sidecar, "spec", "initContainers", "0"))
	}

	ann := podAnnotations(pod.Annotations, s)
	if pod.Annotations == nil {
		ops = append(ops, add(ann, "metadata", "annotations"))
	} else {
		keys := slices.Sorted(maps.Keys(ann))
		for _, k := range keys {
			// add replaces an existing member (RFC 6902 section 4.1).
			ops = append(ops, add(ann[k], "metadata", "annotations", k))
		}
	}
	return ops
}

// appendAll appends to ops the operations adding items to the array at
// path: one operation creating it when absent, else one per item.
func appendAll[T any](ops []patchOp, absent bool, items []T, path ...string) []patchOp {
	switch {
	case len(items) == 0:
	case absent:
		ops = append(ops, add(items, path...))
	default:
		for _, it := range items {
			ops = append(ops, add(it, append(path, "-")...))
		}
	}
	return ops
}

// appAddr is the sidecar's gRPC address for the app containers.
func appAddr(s settings) string {
	if s.unixSocket {
		return "unix://" + grpcSocket
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(s.port)))
}

// appEnv is what the app containers get: SIDECAR_ADDR, and the token file
// the sidecar checks (SIDECAR_API_TOKEN_FILE, which the clients read).
func appEnv(s settings) []corev1.EnvVar {
	env := []corev1.EnvVar{{Name: AddrEnv, Value: appAddr(s)}}
	if s.apiTokenSecret != "" {
		env = append(env, corev1.EnvVar{Name: tokenEnv, Value: tokenDir + "/" + APITokenKey})
	}
	return env
}

// appMounts is what an app container that has the mounts existing gets:
// the sockets' directory, and the API token read-only unless the container
// mounts something at its path already (an app that mounted the token
// itself keeps its mount).
func appMounts(s settings, existing []corev1.VolumeMount) []corev1.VolumeMount {
	var ms []corev1.VolumeMount
	if s.unixSocket {
		ms = append(ms, corev1.VolumeMount{Name: socketVolume, MountPath: socketDir})
	}
	if s.apiTokenSecret != "" && !slices.ContainsFunc(existing, func(m corev1.VolumeMount) bool { return m.MountPath == tokenDir }) {
		ms = append(ms, corev1.VolumeMount{Name: tokenVolume, MountPath: tokenDir, ReadOnly: true})
	}
	return ms
}

// podAnnotations returns the annotations the injector sets on the Pod, given
// the ones it has: the status annotation, unless already there, and the
// Prometheus scrape annotations for the sidecar's metrics, unless the Pod has
// any annotation under PrometheusPrefix (the annotations describe one
// endpoint per Pod, so a Pod that chose its own, or opted out with
// prometheus.io/scrape: "false", keeps its choice untouched).
func podAnnotations(existing map[string]string, s settings) map[string]string {
	ann := map[string]string{}
	if existing[AnnotationStatus] != statusInjected {
		ann[AnnotationStatus] = statusInjected
	}
	for k := range existing {
		if strings.HasPrefix(k, PrometheusPrefix) {
			return ann
		}
	}
	ann[PrometheusScrape] = "true"
	ann[PrometheusPort] = strconv.Itoa(int(s.metricsPort))
	ann[PrometheusPath] = MetricsPath
	return ann
}

func hasEnv(env []corev1.EnvVar, name string) bool {
	for _, e := range env {
		if e.Name == name {
			return true
		}
	}
	return false
}

// sidecarVolumes returns the volumes the sidecar mounts under s.
func sidecarVolumes(s settings) []corev1.Volume {
	var vs []corev1.Volume
	if s.configMap != "" {
		vs = append(vs, corev1.Volume{Name: configVolume, VolumeSource: corev1.VolumeSource{
			ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: s.configMap},
				Items:                []corev1.KeyToPath{{Key: ConfigKey, Path: ConfigKey}},
			},
		}})
	}
	if s.apiTokenSecret != "" {
		vs = append(vs, corev1.Volume{Name: tokenVolume, VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{
				SecretName: s.apiTokenSecret,
				Items:      []corev1.KeyToPath{{Key: APITokenKey, Path: APITokenKey}},
			},
		}})
	}
	if s.unixSocket {
		vs = append(vs, corev1.Volume{Name: socketVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	}
	return vs
}

// sidecarContainer returns the native sidecar container for s. It serves
// gRPC and the HTTP/JSON API on loopback only (the app shares the Pod's
// network namespace) or on unix sockets in a volume shared with the app,
// and only metrics on the Pod's addresses; the kubelet probes the metrics
// endpoint, since it cannot reach loopback or a socket. It reads Redis from
// the Secret and runs as non-root on a read-only root filesystem with no
// capabilities.
func sidecarContainer(s settings, cfg Config) corev1.Container {
	always := corev1.ContainerRestartPolicyAlways
	env := []corev1.EnvVar{{
		Name: "SIDECAR_REDIS_URL",
		ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: s.redisSecret},
			Key:                  RedisURLKey,
		}},
	}}
	if s.redisMode != "" {
		env = append(env, corev1.EnvVar{Name: "SIDECAR_REDIS_MODE", Value: s.redisMode})
	}
	if s.namespace != "" {
		env = append(env, corev1.EnvVar{Name: "SIDECAR_NAMESPACE", Value: s.namespace})
	}
	var mounts []corev1.VolumeMount
	if s.configMap != "" {
		env = append(env, corev1.EnvVar{Name: "SIDECAR_CONFIG", Value: configDir + "/" + ConfigKey})
		mounts = append(mounts, corev1.VolumeMount{Name: configVolume, MountPath: configDir, ReadOnly: true})
	}
	if s.apiTokenSecret != "" {
		env = append(env, corev1.EnvVar{Name: tokenEnv, Value: tokenDir + "/" + APITokenKey})
		mounts = append(mounts, corev1.VolumeMount{Name: tokenVolume, MountPath: tokenDir, ReadOnly: true})
	}
	if s.logLevel != "" {
		env = append(env, corev1.EnvVar{Name: "SIDECAR_LOG_LEVEL", Value: s.logLevel})
	}
	if s.shutdownSeconds > 0 {
		env = append(env, corev1.EnvVar{Name: "SIDECAR_SHUTDOWN_TIMEOUT", Value: strconv.Itoa(int(s.shutdownSeconds)) + "s"})
	}
	if s.env != "" {
		env = append(env, parseEnv(s.env)...)
	}
	args := []string{
		"--listen=" + net.JoinHostPort("127.0.0.1", strconv.Itoa(int(s.port))),
		"--http-listen=" + net.JoinHostPort("127.0.0.1", strconv.Itoa(DefaultHTTPPort)),
	}
	if s.unixSocket {
		args = []string{"--listen=unix://" + grpcSocket, "--listen-mode=" + s.socketMode, "--http-listen=unix://" + httpSocket}
		mounts = append(mounts, corev1.VolumeMount{Name: socketVolume, MountPath: socketDir})
	}
	args = append(args, "--metrics-listen=0.0.0.0:"+strconv.Itoa(int(s.metricsPort)))
	image := cfg.SidecarImage
	if s.image != "" {
		image = s.image
	}
	res := cfg.Resources.DeepCopy()
	for _, o := range []struct {
		list corev1.ResourceList
		name corev1.ResourceName
		v    string
	}{
		{res.Requests, corev1.ResourceCPU, s.cpuRequest}, {res.Limits, corev1.ResourceCPU, s.cpuLimit},
		{res.Requests, corev1.ResourceMemory, s.memoryRequest}, {res.Limits, corev1.ResourceMemory, s.memoryLimit},
	} {
		if o.v != "" {
			o.list[o.name] = resource.MustParse(o.v) // validated by parseAnnotations
		}
	}
	return corev1.Container{
		Name:            ContainerName,
		Image:           image,
		ImagePullPolicy: cfg.ImagePullPolicy,
		RestartPolicy:   &always,
		Args:            args,
		Ports: []corev1.ContainerPort{
			{Name: metricsPortName, ContainerPort: s.metricsPort, Protocol: corev1.ProtocolTCP},
		},
		Env:          env,
		VolumeMounts: mounts,
		Resources:    *res,
		// The metrics server starts after the gRPC listener is bound, so
		// the app containers start once the sidecar accepts connections.
		StartupProbe:  metricsProbe(1, 1, 30),
		LivenessProbe: metricsProbe(10, 2, 3),
		// Store health is not visible here: a Redis outage leaves the Pod
		// ready and the calls fail with UNAVAILABLE (the gRPC health
		// service on loopback still reports it to the app).
		ReadinessProbe:           metricsProbe(5, 2, 2),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext:          restrictedSecurityContext(),
	}
}

// metricsProbe is an HTTP probe of the sidecar's metrics endpoint (its
// port by name), the one listener the kubelet can reach.
func metricsProbe(period, timeout, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: MetricsPath, Port: intstr.FromString(metricsPortName), Scheme: corev1.URISchemeHTTP,
		}},
		PeriodSeconds:    period,
		TimeoutSeconds:   timeout,
		FailureThreshold: failures,
		SuccessThreshold: 1,
	}
}

// restrictedSecurityContext meets the Pod Security Standards' "restricted"
// profile: non-root, no privilege escalation, no capabilities, read-only
// root filesystem and the runtime's default seccomp profile.
func restrictedSecurityContext() *corev1.SecurityContext {
	yes, no, id := true, false, int64(nonRootID)
	return &corev1.SecurityContext{
		RunAsNonRoot:             &yes,
		RunAsUser:                &id,
		RunAsGroup:               &id,
		ReadOnlyRootFilesystem:   &yes,
		AllowPrivilegeEscalation: &no,
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}
