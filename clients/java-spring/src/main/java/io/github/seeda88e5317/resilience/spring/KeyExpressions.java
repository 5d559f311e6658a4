package io.github.seeda88e5317.resilience.spring;

import java.lang.reflect.Method;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.aspectj.lang.ProceedingJoinPoint;
import org.aspectj.lang.reflect.MethodSignature;
import org.springframework.aop.support.AopUtils;
import org.springframework.beans.factory.BeanFactory;
import org.springframework.boot.convert.DurationStyle;
import org.springframework.context.expression.BeanFactoryResolver;
import org.springframework.context.expression.MethodBasedEvaluationContext;
import org.springframework.core.DefaultParameterNameDiscoverer;
import org.springframework.core.ParameterNameDiscoverer;
import org.springframework.core.env.Environment;
import org.springframework.expression.Expression;
import org.springframework.expression.ExpressionException;
import org.springframework.expression.spel.standard.SpelExpressionParser;

/** Evaluates the SpEL keys and resolves the durations of the annotations. */
final class KeyExpressions {

  /** The root object of a key expression: {@code #root.methodName}, {@code #root.args}. */
  public record Root(Method method, Object[] args, Object target, Class<?> targetClass) {
    public String getMethodName() {
      return method.getName();
    }

    public Object[] getArgs() {
      return args;
    }

    public Object getTarget() {
      return target;
    }

    public Class<?> getTargetClass() {
      return targetClass;
    }
  }

  private final SpelExpressionParser parser = new SpelExpressionParser();
  private final ParameterNameDiscoverer names = new DefaultParameterNameDiscoverer();
  private final Map<String, Expression> cache = new ConcurrentHashMap<>();
  private final BeanFactory beans;
  private final Environment env;

  KeyExpressions(BeanFactory beans, Environment env) {
    this.beans = beans;
    this.env = env;
  }

  /** The method being called, as declared on the target class (for its parameter names). */
  static Method method(ProceedingJoinPoint pjp) {
    Method m = ((MethodSignature) pjp.getSignature()).getMethod();
    Object target = pjp.getTarget();
    return target == null ? m : AopUtils.getMostSpecificMethod(m, target.getClass());
  }

  /** The string value of {@code expression}; never null or empty. */
  String evaluate(String annotation, String attribute, String expression, ProceedingJoinPoint pjp) {
    Method method = method(pjp);
    Object target = pjp.getTarget();
    Root root =
        new Root(method, pjp.getArgs(), target, target == null ? null : target.getClass());
    MethodBasedEvaluationContext ctx =
        new MethodBasedEvaluationContext(root, method, pjp.getArgs(), names);
    if (beans != null) {
      ctx.setBeanResolver(new BeanFactoryResolver(beans));
    }
    Object value;
    try {
      value = cache.computeIfAbsent(expression, parser::parseExpression).getValue(ctx);
    } catch (ExpressionException e) {
      throw new IllegalArgumentException(
          where(annotation, attribute, method) + " \"" + expression + "\" failed: " + e.getMessage(),
          e);
    }
    if (value == null || value.toString().isEmpty()) {
      throw new IllegalArgumentException(
          where(annotation, attribute, method)
              + " \""
              + expression
              + "\" evaluated to "
              + (value == null ? "null" : "an empty string"));
    }
    return value.toString();
  }

  /** A duration attribute, with ${...} placeholders resolved. */
  Duration duration(String annotation, String attribute, String value, Method method) {
    String resolved = env == null ? value : env.resolveRequiredPlaceholders(value);
    try {
      return DurationStyle.detectAndParse(resolved.trim());
    } catch (IllegalArgumentException e) {
      throw new IllegalArgumentException(
          where(annotation, attribute, method)
              + " \""
              + value
              + "\" is not a duration (e.g. 500ms, 30s, PT30S)",
          e);
    }
  }

  static String where(String annotation, String attribute, Method method) {
    return "@"
        + annotation
        + "("
        + attribute
        + ") of "
        + method.getDeclaringClass().getSimpleName()
        + "."
        + method.getName();
  }
}
