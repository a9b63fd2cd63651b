//! The gRPC service: enrollment, key rotation, and the report stream (challenges, nonces,
//! landmarks and acknowledgements out; reports in).

use super::*;

#[tonic::async_trait]
impl Collector for Ingest {
    #[instrument(skip_all)]
    async fn enroll(&self, req: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let client_key = client_key(&req);
        let req = req.into_inner();
        if req.public_key.len() != 32 {
            self.metrics.enrollment(false);
            return Err(Status::invalid_argument("public_key must be a raw 32-byte Ed25519 key"));
        }
        if req.enroll_token.is_empty() || req.enroll_token.len() > 256 {
            self.metrics.enrollment(false);
            return Err(Status::unauthenticated("an enroll token is required"));
        }
        let facts = req.facts.unwrap_or_default();
        let hostname: String = facts.hostname.chars().filter(|c| !c.is_control()).take(253).collect();
        let facts_json = serde_json::json!({
            "hostname": hostname,
            "machine_id": facts.machine_id,
            "agent_version": facts.agent_version,
            "gpus": facts.gpus.iter().take(1024).map(|g| serde_json::json!({"uuid": g.uuid, "serial": g.serial})).collect::<Vec<_>>(),
        })
        .to_string();
        let key_id = gpuattest_proto::key_id(&req.public_key);
        let store = self.store.clone();
        let token_hash = crate::tokens::hash(&req.enroll_token);
        let machine_id = facts.machine_id.clone();
        let pk = req.public_key.clone();
        let name = hostname.clone();
        let result = tokio::task::spawn_blocking(move || {
            store.enroll_bound(
                &token_hash,
                &pk,
                &key_id,
                &name,
                &machine_id,
                &facts_json,
                client_key.as_ref().map(|k| k.as_slice()),
                now_ms(),
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match result {
            Ok(host) => {
                self.metrics.enrollment(true);
                info!(host_id = %host.host_id, hostname = %hostname, "host enrolled");
                Ok(Response::new(pb::EnrollResponse { host_id: host.host_id, key_id: key_id.to_vec() }))
            }
            Err(StoreError::Refused(why)) => {
                self.metrics.enrollment(false);
                warn!(hostname = %hostname, reason = %why, "enrollment refused");
                Err(Status::permission_denied(why))
            }
            Err(e) => Err(internal(&e)),
        }
    }

    #[instrument(skip_all)]
    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let req = req.into_inner();
        if req.new_public_key.len() != 32 {
            return Err(Status::invalid_argument("new_public_key must be a raw 32-byte Ed25519 key"));
        }
        let store = self.store.clone();
        let id = req.host_id.clone();
        let host = tokio::task::spawn_blocking(move || store.host(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| internal(&e))?
            .ok_or_else(|| Status::unauthenticated(format!("host {:?} is not enrolled", req.host_id)))?;
        let new_key_id = gpuattest_proto::key_id(&req.new_public_key);
        let vouched_by_current = gpuattest_proto::verify_rotation(
            &host.public_key,
            &req.host_id,
            &req.new_public_key,
            req.last_seq_old_key,
            &req.signature,
        )
        .is_ok();
        // A retried rotation that already took effect: the vouching key is now the retired one.
        let already_done = host.key_id == new_key_id;
        if !vouched_by_current && !already_done {
            warn!(host_id = %host.host_id, "key rotation with a bad signature refused");
            return Err(Status::unauthenticated("the rotation is not signed by the host's current key"));
        }
        let (store, id, pk, seq) =
            (self.store.clone(), host.host_id.clone(), req.new_public_key.clone(), req.last_seq_old_key);
        let result = tokio::task::spawn_blocking(move || store.rotate_key(&id, &pk, seq, crate::now_ms()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match result {
            Ok(key_id) => {
                info!(host_id = %host.host_id, "host key rotated");
                Ok(Response::new(pb::RotateKeyResponse { new_key_id: key_id }))
            }
            Err(StoreError::Refused(why)) => Err(Status::permission_denied(why)),
            Err(e) => Err(internal(&e)),
        }
    }

    type StreamStream = ReceiverStream<Result<pb::CollectorMessage, Status>>;

    #[instrument(skip_all)]
    async fn stream(&self, req: Request<Streaming<pb::AgentMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let presented = client_key(&req);
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(h)) }) => h,
            _ => {
                return Err(Status::invalid_argument("the first message on a stream must be Hello"));
            }
        };
        let store = self.store.clone();
        let id = hello.host_id.clone();
        let host = tokio::task::spawn_blocking(move || store.host(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| internal(&e))?
            .ok_or_else(|| {
                warn!(host_id = %hello.host_id, "stream from an unknown host refused");
                Status::unauthenticated(format!(
                    "host {:?} is not enrolled; enroll it with a token from `token create --role enroll`",
                    hello.host_id
                ))
            })?;
        if host.revoked_at.is_some() {
            return Err(revoked_status(&host.host_id, host.revoked_reason.as_deref().unwrap_or_default()));
        }
        // A host enrolled over mTLS is bound to its certificate's key: another node's certificate (or
        // none) cannot speak for it, even with its Ed25519 key.
        if let Some(bound) = &host.client_key
            && presented.as_ref().map(|k| k.as_slice()) != Some(bound.as_slice())
        {
            warn!(host_id = %host.host_id, peer = ?peer, presented = presented.is_some(), "stream refused: client certificate is not the one the host enrolled with");
            return Err(Status::permission_denied(format!(
                "host {} is bound to the client certificate key it enrolled with; this connection presents {}; each node needs its own certificate",
                host.host_id,
                if presented.is_some() { "another one" } else { "none" }
            )));
        }
        if hello.key_id != host.key_id {
            warn!(host_id = %host.host_id, "stream with a key other than the enrolled one refused");
            return Err(Status::unauthenticated(format!("key is not the one enrolled for host {}", host.host_id)));
        }
        // Nothing the opening message says changes stored state: it is not signed, and anyone who
        // knows a host id and key id can send it. `hello.interval_ms` is ignored; the interval arrives
        // signed in each report.
        let (tx, rx) = mpsc::channel::<Result<pb::CollectorMessage, Status>>(64);
        let nonce = Self::new_nonce();
        // Recorded before the agent sees it: GPU evidence counts only over a nonce issued to this host.
        self.store.issue_nonce(&host.host_id, &nonce, now_ms()).map_err(|e| internal(&e))?;
        let landmarks = self.landmarks_for_agents();
        let challenge = pb::CollectorMessage {
            msg: Some(pb::collector_message::Msg::Challenge(pb::Challenge {
                nonce: nonce.clone(),
                stored_seq: host.last_seq,
                collector_time_unix_ms: now_ms(),
                landmarks: landmarks.clone(),
            })),
        };
        let _ = tx.send(Ok(challenge)).await;
        info!(host_id = %host.host_id, stored_seq = host.last_seq, "stream open");
        self.metrics.stream(true);
        let this = self.clone();
        let mut revoked = self.revocations.subscribe();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let host = Arc::new(host);
            let mut nonce = Arc::new(nonce);
            let mut rotate = tokio::time::interval_at(
                tokio::time::Instant::now() + crate::evidence::NONCE_ROTATION,
                crate::evidence::NONCE_ROTATION,
            );
            let mut bucket = RateLimit::new(REPORTS_PER_SECOND, REPORT_BURST);
            loop {
                // Per-host rate limit: a host over its rate is simply read more slowly, so HTTP/2 flow
                // control pushes back on the agent; nothing is refused or lost.
                bucket.take().await;
                let next = tokio::select! {
                    m = inbound.message() => m,
                    r = revoked.recv() => {
                        let reason = match r {
                            Ok((id, reason)) if id == host.host_id => Some(reason),
                            Ok(_) => None,
                            // Missed some: ask the store about this host.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                let (store, id) = (this.store.clone(), host.host_id.clone());
                                match tokio::task::spawn_blocking(move || store.host(&id)).await {
                                    Ok(Ok(Some(h))) if h.revoked_at.is_some() => Some(h.revoked_reason.unwrap_or_default()),
                                    _ => None,
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
                        };
                        if let Some(reason) = reason {
                            info!(host_id = %host.host_id, "host revoked; closing its stream");
                            let _ = tx.send(Err(revoked_status(&host.host_id, &reason))).await;
                            break;
                        }
                        continue;
                    }
                    _ = rotate.tick() => {
                        // A fresh nonce: GPUs in confidential-computing mode attest again to it.
                        let fresh = Self::new_nonce();
                        if let Err(e) = this.store.issue_nonce(&host.host_id, &fresh, now_ms()) {
                            warn!(host_id = %host.host_id, error = %e, "cannot record a new nonce; keeping the current one");
                            continue;
                        }
                        nonce = Arc::new(fresh.clone());
                        let c = pb::Challenge {
                            nonce: fresh,
                            stored_seq: 0,
                            collector_time_unix_ms: now_ms(),
                            landmarks: this.landmarks_for_agents(),
                        };
                        if tx.send(Ok(pb::CollectorMessage { msg: Some(pb::collector_message::Msg::Challenge(c)) })).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    () = stopping(&mut shutdown) => {
                        let _ = tx.send(Err(Status::unavailable("the collector is shutting down; reconnect (to another replica where there is one) and resend what is unacknowledged"))).await;
                        break;
                    }
                };
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    // tonic reports a protobuf decode failure as INTERNAL; anything else is the
                    // connection breaking (an agent killed or restarted), which is not bad input.
                    Err(status) if status.code() == Code::Internal => {
                        this.metrics.rejected(Reject::Malformed);
                        warn!(host_id = %host.host_id, error = %status.message(), "undecodable message; closing this stream");
                        let _ = tx
                            .send(Err(Status::invalid_argument(format!("undecodable message: {}", status.message()))))
                            .await;
                        break;
                    }
                    Err(status) => {
                        info!(host_id = %host.host_id, reason = %status.message(), "stream broke");
                        break;
                    }
                };
                let signed = match msg.msg {
                    Some(pb::agent_message::Msg::Report(s)) => s,
                    _ => {
                        this.metrics.rejected(Reject::Malformed);
                        let rej = pb::Rejection {
                            seq: 0,
                            code: Code::InvalidArgument as i32,
                            message: "expected a report".into(),
                        };
                        let _ = tx
                            .send(Ok(pb::CollectorMessage { msg: Some(pb::collector_message::Msg::Rejection(rej)) }))
                            .await;
                        continue;
                    }
                };
                let reply = match this.ingest(&host, signed, &nonce).await {
                    Ok(Ok(seq)) => pb::collector_message::Msg::Ack(pb::Ack { seq }),
                    Ok(Err(r)) if r.kind == Reject::HostGone => {
                        this.metrics.rejected(r.kind);
                        let reason = this.store.host(&host.host_id).ok().flatten().and_then(|h| h.revoked_reason);
                        info!(host_id = %host.host_id, "report from a revoked host; closing its stream");
                        let _ =
                            tx.send(Err(revoked_status(&host.host_id, reason.as_deref().unwrap_or_default()))).await;
                        break;
                    }
                    Ok(Err(r)) => {
                        this.metrics.rejected(r.kind);
                        warn!(host_id = %host.host_id, seq = r.seq, code = ?r.code, reason = %r.message, "report rejected");
                        pb::collector_message::Msg::Rejection(pb::Rejection {
                            seq: r.seq,
                            code: r.code as i32,
                            message: r.message,
                        })
                    }
                    Err(status) => {
                        warn!(host_id = %host.host_id, error = %status, "store failure; closing the stream so the agent resends");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                if tx.send(Ok(pb::CollectorMessage { msg: Some(reply) })).await.is_err() {
                    break;
                }
            }
            this.metrics.stream(false);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
