//! API.md §3: agents and phone numbers from ElevenLabs (the simulator here).

use marcador::elevenlabs::simulator::{Fault, FaultAction, SIM_AGENT_COBRANZA, SIM_PHONE_ASSIGNED};
use serde_json::json;

use crate::helpers::{Backend, both_backends, spawn_app};

both_backends!(
    agents_need_a_token,
    agents_are_listed_with_their_voice_and_language,
    one_agent_shows_the_variables_it_uses,
    unknown_agent_is_not_found,
    phone_numbers_are_listed_under_both_paths,
    elevenlabs_failures_are_502_or_503_and_lists_are_cached,
    undecodable_path_segments_get_json_errors,
);

async fn agents_need_a_token(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in [
        "/api/agents",
        "/api/agents/list",
        "/api/agents/phone-numbers",
        "/api/phone-numbers",
        "/api/agents/x",
    ] {
        app.get(path, None)
            .await
            .assert_error(401, "Token de autenticación requerido");
    }
}

async fn agents_are_listed_with_their_voice_and_language(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    for path in ["/api/agents", "/api/agents/list"] {
        let reply = app.get(path, Some(&token)).await;
        reply.assert_ok(200, "Agentes obtenidos exitosamente");
        let data = &reply.body["data"];
        assert_eq!(data["count"], 2);
        assert_eq!(data["hasMore"], false);
        let first = &data["agents"][0];
        assert_eq!(first["agent_id"], SIM_AGENT_COBRANZA);
        assert_eq!(first["language"], "es");
        assert_eq!(first["voice_id"], "sim_voice_es_1");
        assert_eq!(first["status"], "active");
        assert!(first["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let page = app
        .get("/api/agents?pageSize=1&search=simulador", Some(&token))
        .await;
    assert_eq!(page.body["data"]["count"], 1);
    assert_eq!(page.body["data"]["hasMore"], true);
    assert_eq!(page.body["data"]["nextCursor"], "1");
    let next = app
        .get(
            "/api/agents?pageSize=1&search=simulador&cursor=1",
            Some(&token),
        )
        .await;
    assert_eq!(
        next.body["data"]["agents"][0]["name"],
        "Recordatorio de citas (simulador)"
    );
}

async fn one_agent_shows_the_variables_it_uses(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let reply = app
        .get(&format!("/api/agents/{SIM_AGENT_COBRANZA}"), Some(&token))
        .await;
    reply.assert_ok(200, "Agente obtenido exitosamente");
    let agent = &reply.body["data"];
    assert_eq!(agent["dynamicVariables"], json!(["monto", "name"]));
    assert!(agent["firstMessage"].as_str().unwrap().contains("{{name}}"));
    assert!(
        agent["prompt"]
            .as_str()
            .unwrap()
            .contains("{{system__time_utc}}")
    );
}

async fn unknown_agent_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    app.get("/api/agents/agent_nope", Some(&token))
        .await
        .assert_error(404, "Agente no encontrado");
}

async fn phone_numbers_are_listed_under_both_paths(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    for path in ["/api/phone-numbers", "/api/agents/phone-numbers"] {
        let reply = app.get(path, Some(&token)).await;
        reply.assert_ok(200, "Números de teléfono obtenidos exitosamente");
        assert_eq!(reply.body["data"]["count"], 2);
        let first = &reply.body["data"]["phoneNumbers"][0];
        assert_eq!(first["phone_number_id"], SIM_PHONE_ASSIGNED);
        assert_eq!(first["phone_number"], "+576015550100");
        assert_eq!(first["provider"], "twilio");
        assert_eq!(first["assigned_agent"]["agent_id"], SIM_AGENT_COBRANZA);
    }
}

async fn elevenlabs_failures_are_502_or_503_and_lists_are_cached(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let sim = app.state.simulator.clone().unwrap();
    sim.inject(Fault::status(
        "GET",
        "/v1/convai/agents",
        401,
        json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}),
    ));
    let reply = app.get("/api/agents", Some(&token)).await;
    reply.assert_error(502, "Error obteniendo agentes de ElevenLabs");
    assert_eq!(reply.body["errorCode"], "ELEVENLABS_UNAUTHORIZED");
    assert!(
        !reply.text.contains("simulator-local-key"),
        "the key never leaks"
    );
    sim.clear_faults();

    sim.inject(Fault {
        method: Some("GET".into()),
        path_prefix: "/v1/convai/phone-numbers".into(),
        action: FaultAction::Status {
            status: 429,
            body: json!({"detail": {"code": "rate_limit_exceeded", "message": "slow down"}}),
            retry_after: Some(7),
        },
        times: None,
        skip: None,
    });
    let busy = app.get("/api/phone-numbers", Some(&token)).await;
    busy.assert_error(503, "Error obteniendo números de teléfono de ElevenLabs");
    assert_eq!(busy.body["errorCode"], "ELEVENLABS_BUSY");
    assert_eq!(busy.headers["retry-after"], "7");
    sim.clear_faults();

    // A failure that heals within the client's retries is invisible.
    sim.inject(
        Fault::status(
            "GET",
            "/v1/convai/phone-numbers",
            500,
            json!({"detail": "boom"}),
        )
        .times(1),
    );
    app.get("/api/phone-numbers", Some(&token))
        .await
        .assert_ok(200, "Números de teléfono obtenidos exitosamente");
    // Cached now: a failing ElevenLabs is not even asked.
    sim.inject(Fault::status(
        "GET",
        "/v1/convai/phone-numbers",
        500,
        json!({"detail": "boom"}),
    ));
    sim.clear_requests();
    app.get("/api/phone-numbers", Some(&token))
        .await
        .assert_ok(200, "Números de teléfono obtenidos exitosamente");
    assert!(sim.requests().is_empty());
}

/// A path segment that is not UTF-8 once decoded is answered in the envelope,
/// like every other error, never with the framework's plain text.
async fn undecodable_path_segments_get_json_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, _) = app.admin().await;
    let agent = app.get("/api/agents/%FF", Some(&token)).await;
    agent.assert_error(404, "Agente no encontrado");
    let number = app.delete("/api/do-not-call/%C0", Some(&token)).await;
    assert_eq!(number.status, 400, "{}", number.text);
    assert_eq!(number.body["success"], false);
    assert!(number.body["message"].is_string());
}
