#!/usr/bin/env bash
# Installs the Java artifacts as a user would and runs programs with them: in a fresh directory
# outside the repository, a Maven project that depends on
# io.github.seeda88e5317:resilience-sidecar-client:<VERSION> and
# io.github.seeda88e5317:resilience-sidecar-spring-boot-starter:<VERSION> resolves them only from
# <repo>/dist/java/maven (a file:// repository, built by clients/java/dist.sh) and their third-party
# dependencies from Maven Central, with an empty local repository of its own (so nothing built in
# this checkout can stand in for the published artifacts). It compiles and runs, against a real
# sidecar started here ($SIDECAR_BIN, else <repo>/.bin/sidecar; embedded store):
#   demo.Main      the client: a lock, an idempotent operation run twice, a raw stub call;
#   demo.BootMain  a Spring Boot application on the starter: the auto-configured client,
#                  @Idempotent called twice (runs once), @WithLock (a fencing token).
#
# Run clients/java/dist.sh first. Fails (non-zero) on any error. KEEP=1 keeps the directory.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(tr -d '[:space:]' <"$root/VERSION")
dist="$root/dist/java/maven"
bin="${SIDECAR_BIN:-$root/.bin/sidecar}"
jar="$dist/io/github/seeda88e5317/resilience-sidecar-client/$version/resilience-sidecar-client-$version.jar"
if [[ ! -s "$jar" ]]; then
  echo "install-test.sh: $jar is missing: run clients/java/dist.sh first" >&2
  exit 1
fi
if [[ ! -x "$bin" ]]; then
  echo "install-test.sh: no sidecar binary at $bin (set SIDECAR_BIN, or make build)" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/resilience-java-install.XXXXXX")
sidecar_pid=
cleanup() {
  if [[ -n "$sidecar_pid" ]]; then kill "$sidecar_pid" 2>/dev/null || true; wait "$sidecar_pid" 2>/dev/null || true; fi
  if [[ "${KEEP:-}" == 1 ]]; then echo "install-test.sh: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
case "$work" in "$root"/*) echo "install-test.sh: $work is inside the repository" >&2; exit 1 ;; esac

mkdir -p "$work/app/src/main/java/demo"
cat >"$work/app/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>demo</groupId>
  <artifactId>install-test</artifactId>
  <version>1</version>
  <properties>
    <maven.compiler.release>17</maven.compiler.release>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <repositories>
    <repository>
      <id>resilience-dist</id>
      <url>file://$dist</url>
    </repository>
  </repositories>
  <dependencies>
    <dependency>
      <groupId>io.github.seeda88e5317</groupId>
      <artifactId>resilience-sidecar-client</artifactId>
      <version>$version</version>
    </dependency>
    <dependency>
      <groupId>io.github.seeda88e5317</groupId>
      <artifactId>resilience-sidecar-spring-boot-starter</artifactId>
      <version>$version</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-compiler-plugin</artifactId>
        <version>3.13.0</version>
        <configuration>
          <parameters>true</parameters>
        </configuration>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-resources-plugin</artifactId>
        <version>3.3.1</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
POM

cat >"$work/app/src/main/java/demo/Main.java" <<'JAVA'
package demo;

import io.github.seeda88e5317.resilience.IdempotentResult;
import io.github.seeda88e5317.resilience.LockOptions;
import io.github.seeda88e5317.resilience.ResilienceClient;
import io.github.seeda88e5317.resilience.v1.NextUlidRequest;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;

public class Main {
  public static void main(String[] args) throws Exception {
    try (ResilienceClient client = ResilienceClient.create()) {
      long token =
          client.withLock(
              "install-test/lock",
              LockOptions.defaults().waitTimeout(Duration.ofSeconds(5)),
              (lease, cancelled) -> lease.fencingToken());
      check(token > 0, "fencing token " + token);

      AtomicInteger runs = new AtomicInteger();
      String fp = ResilienceClient.fingerprint("charge 42");
      IdempotentResult first = null;
      for (int i = 0; i < 2; i++) {
        IdempotentResult r =
            client.idempotent(
                "install-test/charge-42",
                fp,
                () -> IdempotentResult.ofString("charged " + runs.incrementAndGet(), Map.of("status", "201")));
        if (first == null) {
          first = r;
        }
        check(r.dataAsString().equals("charged 1"), "result " + r.dataAsString());
      }
      check(runs.get() == 1, "the operation ran " + runs.get() + " times");

      String ulid =
          client.clocks().nextUlid(NextUlidRequest.newBuilder().setCount(1).build()).getUlids(0).getValue();
      check(ulid.length() == 26, "ULID " + ulid);
      System.out.println("install-test: lock token " + token + ", idempotent ran once (" + first.dataAsString() + "), ULID " + ulid);
    }
  }

  private static void check(boolean ok, String what) {
    if (!ok) {
      throw new AssertionError("install-test: unexpected " + what);
    }
  }
}
JAVA

cat >"$work/app/src/main/java/demo/BootMain.java" <<'JAVA'
package demo;

import io.github.seeda88e5317.resilience.ResilienceClient;
import io.github.seeda88e5317.resilience.spring.CurrentLock;
import io.github.seeda88e5317.resilience.spring.Idempotent;
import io.github.seeda88e5317.resilience.spring.WithLock;
import java.util.concurrent.atomic.AtomicInteger;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.ConfigurableApplicationContext;
import org.springframework.stereotype.Service;

@SpringBootApplication
public class BootMain {

  public record Shipment(String orderId, int run) {}

  @Service
  public static class Shipping {
    private final AtomicInteger runs = new AtomicInteger();

    @Idempotent(key = "#orderId")
    public Shipment ship(String orderId) {
      return new Shipment(orderId, runs.incrementAndGet());
    }

    @WithLock(key = "'stock/' + #sku", waitTimeout = "5s")
    public long reserve(String sku) {
      return CurrentLock.lease().orElseThrow().fencingToken();
    }

    public int runs() {
      return runs.get();
    }
  }

  public static void main(String[] args) {
    try (ConfigurableApplicationContext ctx =
        SpringApplication.run(BootMain.class, "--spring.main.banner-mode=off")) {
      ResilienceClient client = ctx.getBean(ResilienceClient.class);
      check(client.address().equals(System.getenv("SIDECAR_ADDR")), "address " + client.address());
      Shipping shipping = ctx.getBean(Shipping.class);
      Shipment a = shipping.ship("o-1");
      Shipment b = shipping.ship("o-1");
      check(a.equals(b) && shipping.runs() == 1, a + " " + b + " runs " + shipping.runs());
      long token = shipping.reserve("sku-1");
      check(token > 0, "fencing token " + token);
      System.out.println("install-test (Spring Boot): @Idempotent ran once (" + a + "), @WithLock token " + token);
    }
  }

  private static void check(boolean ok, String what) {
    if (!ok) {
      throw new AssertionError("install-test: unexpected " + what);
    }
  }
}
JAVA

strip() { sed -u 's/\x1b\[0m//g'; } # Debian's Maven prints colour resets even with -B
m2="$work/m2" # empty: the client can only come from dist/java
(cd "$work/app" && mvn -B -q "-Dmaven.repo.local=$m2" compile dependency:build-classpath \
  -Dmdep.outputFile=cp.txt 2>&1 | strip; exit "${PIPESTATUS[0]}")
for a in resilience-sidecar-client resilience-sidecar-spring-boot-starter; do
  origin=$(cat "$m2/io/github/seeda88e5317/$a/$version/_remote.repositories")
  if ! grep -q "$a-$version.jar>resilience-dist=" <<<"$origin"; then
    echo "install-test.sh: $a did not come from dist/java:" >&2
    echo "$origin" >&2
    exit 1
  fi
done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -u SIDECAR_REDIS_URL "$bin" --listen "127.0.0.1:$port" --metrics-listen "" --http-listen "" \
  >"$work/sidecar.log" 2>&1 &
sidecar_pid=$!
export SIDECAR_ADDR="127.0.0.1:$port"
unset SIDECAR_API_TOKEN SIDECAR_API_TOKEN_FILE
# Wait until the sidecar listens (up to 20 s on a slow machine).
ok=0
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then ok=1; break; fi
  kill -0 "$sidecar_pid" 2>/dev/null || { cat "$work/sidecar.log" >&2; exit 1; }
  sleep 0.2 # real time must pass for the sidecar to start listening
done
[[ $ok -eq 1 ]] || { echo "install-test.sh: the sidecar did not listen within 20 s" >&2; cat "$work/sidecar.log" >&2; exit 1; }

cp="$work/app/target/classes:$(cat "$work/app/cp.txt")"
java -cp "$cp" demo.Main
java -cp "$cp" demo.BootMain
echo "install-test.sh: resilience-sidecar-client and resilience-sidecar-spring-boot-starter $version from dist/java installed and ran: OK"
