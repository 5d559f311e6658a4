#!/usr/bin/env bash
# Builds the Java artifacts of this version into <repo>/dist/java/maven, a Maven repository
# (file:// layout, with checksums and maven-metadata.xml), as `mvn deploy` would publish them:
#
#   io.github.seeda88e5317:resilience-sidecar-client:<version>            (clients/java)
#   io.github.seeda88e5317:resilience-sidecar-spring-boot-starter:<version> (clients/java-spring)
#
# each as the jar, the -sources and -javadoc jars and the pom. Fails when a pom's version (or the
# client version the starter depends on) differs from <repo>/VERSION. Tests are not run here
# (clients/java/test.sh, clients/java-spring/test.sh). Extra arguments go to Maven.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
starter="$root/clients/java-spring"

version=$(tr -d '[:space:]' <"$root/VERSION")
if [[ -z "$version" ]]; then
  echo "dist.sh: $root/VERSION is empty" >&2
  exit 1
fi

# The project's own <version> is the first <version> element of each pom (neither has a parent).
pom_version() { grep -m1 -o '<version>[^<]*</version>' "$1" | sed 's/<[^>]*>//g'; }
fail=0
for pom in "$here/pom.xml" "$starter/pom.xml"; do
  v=$(pom_version "$pom")
  if [[ "$v" != "$version" ]]; then
    echo "dist.sh: $pom has version $v, but VERSION says $version" >&2
    fail=1
  fi
done
dep=$(grep -o '<resilience-client.version>[^<]*<' "$starter/pom.xml" | sed 's/<[^>]*>//g; s/<$//')
if [[ "$dep" != "$version" ]]; then
  echo "dist.sh: $starter/pom.xml depends on client $dep, but VERSION says $version" >&2
  fail=1
fi
[[ $fail -eq 0 ]] || exit 1

out="$root/dist/java/maven"
rm -rf "$root/dist/java"
mkdir -p "$out"
args=(-B -q "-Dmaven.repo.local=$root/.cache/m2" -DskipTests "-DaltDeploymentRepository=dist::file://$out")
strip() { sed -u 's/\x1b\[0m//g'; } # Debian's Maven prints colour resets even with -B

# deploy runs install first, so the starter's build finds this client in the local repository.
(cd "$here" && mvn "${args[@]}" deploy "$@" 2>&1 | strip; exit "${PIPESTATUS[0]}")
(cd "$starter" && mvn "${args[@]}" deploy "$@" 2>&1 | strip; exit "${PIPESTATUS[0]}")

missing=0
for a in resilience-sidecar-client resilience-sidecar-spring-boot-starter; do
  d="$out/io/github/seeda88e5317/$a/$version"
  for f in "$a-$version.jar" "$a-$version-sources.jar" "$a-$version-javadoc.jar" "$a-$version.pom"; do
    if [[ ! -s "$d/$f" ]]; then
      echo "dist.sh: $d/$f was not built" >&2
      missing=1
    fi
  done
done
[[ $missing -eq 0 ]] || exit 1
echo "dist.sh: Java artifacts $version in $out:"
(cd "$out" && find . -name '*.jar' -o -name '*.pom' | sort | sed 's/^\.\//  /')
