//! The built-in `stardust.Connection` service every server answers itself.

use super::*;

impl ServerConn {
    /// A request to the built-in `stardust.Connection` service, answered by the runtime itself:
    /// `authenticate(token)` replaces the connection's identity with the one a renewed token
    /// proves.
    pub(super) fn connection_request(
        self: &Arc<Self>,
        shared: &Arc<ServerShared>,
        h: &Header,
        req: &RequestView<'_>,
    ) -> Result<(), Error> {
        if req.method != AUTHENTICATE_METHOD {
            return Err(Error::new(
                ErrorKind::UnknownMethod,
                format!(
                    "service `{CONNECTION_SERVICE}` has no method `{}`",
                    req.method
                ),
            ));
        }
        let Some(authenticator) = shared.auth.authenticator.clone() else {
            return Err(Error::new(ErrorKind::Unauthorized, auth::NO_AUTHENTICATOR));
        };
        let (token,): (String,) = codec::decode_args(req.args, 1)?;
        let deadline =
            (req.timeout_us > 0).then(|| Instant::now() + Duration::from_micros(req.timeout_us));
        let (id, flags) = (h.id, h.flags);
        let conn = self.clone();
        let policy = shared.auth.clone();
        // Verification may fetch keys from the registry: never on the read loop.
        self.track(h, move |key, task_id| async move {
            let verify = async {
                match authenticator.authenticate(&token).await {
                    Ok(identity) => {
                        // A connection proves one key for life: the renewed token must be
                        // bound to it.
                        policy.check_renewal(&identity, conn.info.auth.proven_key())?;
                        let app = identity.app_arc().clone();
                        conn.info.auth.set(identity).map(|()| app)
                    }
                    Err(e) => Err(auth::refusal(e, &token)),
                }
            };
            let outcome = match deadline {
                Some(d) => tokio::time::timeout_at(d, verify)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::new(
                            ErrorKind::DeadlineExceeded,
                            "verifying the access token took longer than the request's deadline",
                        ))
                    }),
                None => verify.await,
            };
            match outcome {
                Ok(app) => {
                    tracing::debug!(peer = %conn.peer, app = &*app, "token renewed");
                    if flags & FLAG_ONE_WAY == 0 {
                        let _ = conn.out.push(|buf| {
                            let start = frame::begin(buf, Kind::Response, 0, id);
                            buf.extend_from_slice(&[0xc0]); // nil: `authenticate` returns ()
                            frame::finish(buf, start, u32::MAX)
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, reason = %e, "renewed token refused");
                    conn.reply_error(id, flags, &e);
                }
            }
            conn.call_done(key, task_id);
        });
        Ok(())
    }
}
