package io.github.seeda88e5317.resilience;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.github.seeda88e5317.resilience.v1.GetSagaRequest;
import io.github.seeda88e5317.resilience.v1.SagaState;
import io.github.seeda88e5317.resilience.v1.StartSagaRequest;
import java.util.UUID;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** Every service of the sidecar is reachable from ResilienceClient. */
@ExtendWith(SidecarExtension.class)
@Timeout(60)
class ServicesTest {
  ResilienceClient client;

  @BeforeEach
  void connect(SidecarExtension.Env env) {
    client = env.client();
  }

  @AfterEach
  void close() {
    client.close();
  }

  @Test
  void sagaStubStartsAndReadsASaga() {
    String id = "java-" + UUID.randomUUID();
    var started = client.sagas().startSaga(StartSagaRequest.newBuilder().setSagaId(id).setName("checkout").build());
    assertEquals(id, started.getSaga().getSagaId());
    var got = client.sagas().getSaga(GetSagaRequest.newBuilder().setSagaId(id).build());
    assertEquals("checkout", got.getSaga().getName());
    assertEquals(SagaState.SAGA_STATE_RUNNING, got.getSaga().getState());
  }
}
