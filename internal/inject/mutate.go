package inject

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Paths and names of what the injected container mounts.
const (
	configVolume    = "resilience-sidecar-config"
	configDir       = "/etc/resilience-sidecar"
	tokenVolume     = "resilience-sidecar-token"
	tokenDir        = "/var/run/secrets/resilience-sidecar"
	nonRootID       = 65532 // the distroless "nonroot" user and group
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
	addr := corev1.EnvVar{Name: AddrEnv, Value: net.JoinHostPort("127.0.0.1", strconv.Itoa(int(s.port)))}
	for _, list := range []struct {
		field string
		cs    []corev1.Container
	}{{"containers", pod.Spec.Containers}, {"initContainers", pod.Spec.InitContainers}} {
		for i, c := range list.cs {
			if hasEnv(c.Env, AddrEnv) {
				continue // the app chose its own address
			}
			if c.Env == nil {
				ops = append(ops, add([]corev1.EnvVar{addr}, "spec", list.field, strconv.Itoa(i), "env"))
			} else {
				ops = append(ops, add(addr, "spec", list.field, strconv.Itoa(i), "env", "-"))
			}
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
	return vs
}

// sidecarContainer returns the native sidecar container for s: it listens
// on all the Pod's addresses (the kubelet's gRPC probes connect to the Pod
// IP; the optional API token guards every RPC but health), reads Redis from
// the Secret, and runs as non-root on a read-only root filesystem with no
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
		env = append(env, corev1.EnvVar{Name: "SIDECAR_API_TOKEN_FILE", Value: tokenDir + "/" + APITokenKey})
		mounts = append(mounts, corev1.VolumeMount{Name: tokenVolume, MountPath: tokenDir, ReadOnly: true})
	}
	return corev1.Container{
		Name:            ContainerName,
		Image:           cfg.SidecarImage,
		ImagePullPolicy: cfg.ImagePullPolicy,
		RestartPolicy:   &always,
		Args: []string{
			"--listen=0.0.0.0:" + strconv.Itoa(int(s.port)),
			"--metrics-listen=0.0.0.0:" + strconv.Itoa(int(s.metricsPort)),
		},
		Ports: []corev1.ContainerPort{
			{Name: grpcPortName, ContainerPort: s.port, Protocol: corev1.ProtocolTCP},
			{Name: metricsPortName, ContainerPort: s.metricsPort, Protocol: corev1.ProtocolTCP},
		},
		Env:           env,
		VolumeMounts:  mounts,
		Resources:     *cfg.Resources.DeepCopy(),
		StartupProbe:  grpcProbe(s.port, LivenessService, 1, 1, 30),
		LivenessProbe: grpcProbe(s.port, LivenessService, 10, 2, 3),
		// The "" service is NOT_SERVING while the store is unreachable: the
		// Pod leaves its Services' endpoints but is not restarted.
		ReadinessProbe:           grpcProbe(s.port, "", 5, 2, 2),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext:          restrictedSecurityContext(),
	}
}

// grpcProbe is a grpc.health.v1 probe of service on port; "" is the
// server's overall health.
func grpcProbe(port int32, service string, period, timeout, failures int32) *corev1.Probe {
	p := &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: port, Service: &service}},
		PeriodSeconds:    period,
		TimeoutSeconds:   timeout,
		FailureThreshold: failures,
		SuccessThreshold: 1,
	}
	return p
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
