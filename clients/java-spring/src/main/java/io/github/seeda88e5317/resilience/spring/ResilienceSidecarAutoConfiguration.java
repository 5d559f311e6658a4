package io.github.seeda88e5317.resilience.spring;

import com.fasterxml.jackson.databind.ObjectMapper;
import io.github.seeda88e5317.resilience.ResilienceClient;
import jakarta.servlet.http.HttpServletRequest;
import java.util.HashMap;
import java.util.Map;
import org.aspectj.lang.annotation.Aspect;
import org.springframework.beans.factory.BeanFactory;
import org.springframework.beans.factory.ObjectProvider;
import org.springframework.boot.autoconfigure.AutoConfiguration;
import org.springframework.boot.autoconfigure.condition.ConditionalOnClass;
import org.springframework.boot.autoconfigure.condition.ConditionalOnMissingBean;
import org.springframework.boot.autoconfigure.condition.ConditionalOnProperty;
import org.springframework.boot.autoconfigure.condition.ConditionalOnWebApplication;
import org.springframework.boot.autoconfigure.jackson.JacksonAutoConfiguration;
import org.springframework.boot.context.properties.EnableConfigurationProperties;
import org.springframework.boot.web.servlet.FilterRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.core.env.Environment;
import org.springframework.web.filter.OncePerRequestFilter;

/**
 * Auto-configuration of the resilience sidecar: a {@link ResilienceClient} from {@code
 * resilience.sidecar.*} (unless the application declares its own), the {@link Idempotent} and
 * {@link WithLock} aspects, and, in a servlet web application, the {@link IdempotencyKeyFilter}
 * (off with {@code resilience.sidecar.idempotency.enabled=false}).
 */
@AutoConfiguration(after = JacksonAutoConfiguration.class)
@EnableConfigurationProperties(ResilienceSidecarProperties.class)
public class ResilienceSidecarAutoConfiguration {

  /**
   * The client, closed with the context. Unset properties fall back to the environment variables
   * {@code SIDECAR_ADDR}, {@code SIDECAR_API_TOKEN}, {@code SIDECAR_API_TOKEN_FILE}.
   */
  @Bean(destroyMethod = "close")
  @ConditionalOnMissingBean
  public ResilienceClient resilienceClient(ResilienceSidecarProperties p) {
    Map<String, String> env = new HashMap<>(System.getenv());
    if (p.getTokenFile() != null) {
      env.remove(ResilienceClient.ENV_TOKEN);
      env.put(ResilienceClient.ENV_TOKEN_FILE, p.getTokenFile().toString());
    }
    ResilienceClient.Builder b =
        ResilienceClient.builder()
            .environment(env)
            .callTimeout(p.getCallTimeout())
            .connectWait(p.getConnectWait())
            .maxReconnectBackoff(p.getMaxReconnectBackoff())
            .propagateTraceContext(p.isPropagateTraceContext());
    if (p.getAddress() != null && !p.getAddress().isBlank()) {
      b.address(p.getAddress().strip());
    }
    if (p.getToken() != null && !p.getToken().isEmpty()) {
      b.token(p.getToken());
    }
    return b.build();
  }

  /** The {@link Idempotent} and {@link WithLock} aspects. */
  @Configuration(proxyBeanMethods = false)
  @ConditionalOnClass(Aspect.class)
  static class Aspects {

    @Bean
    @ConditionalOnMissingBean
    IdempotentAspect idempotentAspect(
        ResilienceClient client,
        ObjectProvider<ObjectMapper> json,
        BeanFactory beans,
        Environment env) {
      return new IdempotentAspect(
          client,
          json.getIfAvailable(() -> new ObjectMapper().findAndRegisterModules()),
          new KeyExpressions(beans, env));
    }

    @Bean
    @ConditionalOnMissingBean
    WithLockAspect withLockAspect(ResilienceClient client, BeanFactory beans, Environment env) {
      return new WithLockAspect(client, new KeyExpressions(beans, env));
    }
  }

  /** The Idempotency-Key filter of servlet web applications. */
  @Configuration(proxyBeanMethods = false)
  @ConditionalOnWebApplication(type = ConditionalOnWebApplication.Type.SERVLET)
  @ConditionalOnClass({OncePerRequestFilter.class, HttpServletRequest.class})
  @ConditionalOnProperty(
      prefix = "resilience.sidecar.idempotency",
      name = "enabled",
      matchIfMissing = true)
  static class IdempotencyFilter {

    @Bean
    @ConditionalOnMissingBean(name = "idempotencyKeyFilter")
    FilterRegistrationBean<IdempotencyKeyFilter> idempotencyKeyFilter(
        ResilienceClient client,
        ResilienceSidecarProperties p,
        ObjectProvider<IdempotencyScopeResolver> scope) {
      ResilienceSidecarProperties.Idempotency s = p.getIdempotency();
      FilterRegistrationBean<IdempotencyKeyFilter> reg =
          new FilterRegistrationBean<>(
              new IdempotencyKeyFilter(client, s, scope.getIfAvailable()));
      reg.setName("idempotencyKeyFilter");
      reg.setUrlPatterns(s.getUrlPatterns());
      reg.setOrder(s.getFilterOrder());
      return reg;
    }
  }
}
