package inject

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestPolicyMatchesTheInjector: the ValidatingAdmissionPolicy that checks
// workload templates at apply time (policy.yaml) applies the injector's
// rules: the same patterns (as CEL string literals, backslashes doubled),
// the same known annotations and the same reserved environment variables.
// The policy's behaviour is tested on a real API server in e2e/k8s.
func TestPolicyMatchesTheInjector(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(k8sDir, "injector", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	policy := string(data)
	for name, p := range map[string]string{
		"ImagePattern": ImagePattern, "EnvPattern": EnvPattern, "QuantityPattern": QuantityPattern, "SocketModePattern": SocketModePattern,
	} {
		if lit := "'" + strings.ReplaceAll(p, `\`, `\\`) + "'"; !strings.Contains(policy, lit) {
			t.Errorf("policy.yaml lacks %s as the CEL literal %s", name, lit)
		}
	}
	quoted := func(section string) []string {
		var out []string
		for _, m := range regexp.MustCompile(`'([^']+)'`).FindAllStringSubmatch(section, -1) {
			out = append(out, m[1])
		}
		return out
	}
	between := func(from, to string) string {
		t.Helper()
		i := strings.Index(policy, from)
		if i < 0 {
			t.Fatalf("policy.yaml lacks %q", from)
		}
		j := strings.Index(policy[i:], to)
		if j < 0 {
			t.Fatalf("policy.yaml lacks %q after %q", to, from)
		}
		return policy[i : i+j]
	}
	known := quoted(between("- name: unknown", "- name: inject"))
	known = slices.DeleteFunc(known, func(s string) bool { return s == AnnotationPrefix }) // the startsWith argument
	if !slices.Equal(known, knownAnnotations) {
		t.Errorf("the policy's known annotations\n%q\ndiffer from the injector's\n%q", known, knownAnnotations)
	}
	reserved := quoted(between("!variables.envNames.exists(n, n in [", "])"))
	if !slices.Equal(reserved, reservedEnv) {
		t.Errorf("the policy's reserved env\n%q\ndiffers from the injector's\n%q", reserved, reservedEnv)
	}
}
