package io.github.seeda88e5317.resilience;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * The topic is not one the sidecar's config declares ({@code NOT_FOUND}/{@code TOPIC_UNKNOWN}):
 * when the config lists {@code events.topics}, only those (and their dead-letter topics) exist.
 */
public class TopicUnknownException extends SidecarException {
  private static final long serialVersionUID = 1L;

  TopicUnknownException(Status status, Metadata trailers, Details details) {
    super(status, trailers, details);
  }
}
