package io.github.seeda88e5317.resilience.spring.testapp;

import io.github.seeda88e5317.resilience.spring.IdempotencyScopeResolver;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.condition.ConditionalOnProperty;
import org.springframework.context.annotation.Bean;

/** The application the starter's tests run: a few endpoints and an annotated service. */
@SpringBootApplication
public class TestApp {

  /** With test.tenant-scope=true: the scope is the X-Tenant header. */
  @Bean
  @ConditionalOnProperty("test.tenant-scope")
  IdempotencyScopeResolver tenantScope() {
    return request -> "tenant-" + request.getHeader("X-Tenant");
  }
}
