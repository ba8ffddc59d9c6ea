//! XEP-0077 In-Band Registration: account creation before authentication
//! (only when `registration.enabled`), password change and account removal
//! after it.

use super::{IqCtx, IqHandler, IqReply, IqResult, IqTarget, Module, Stage, StreamFeature};
use crate::accounts::{self, AccountError};
use crate::server::Server;
use crate::stanza::StreamCondition;
use crate::stanza::{Condition, StanzaError, error_reply, iq_result};
use crate::xml::Element;
use futures::FutureExt;

pub const NS_REGISTER: &str = "jabber:iq:register";

pub static MODULE: Module = Module {
    name: "register",
    spec: "XEP-0077",
    features: &[NS_REGISTER],
    stream_features: &[StreamFeature {
        stage: Stage::PreAuth,
        xml: "<register xmlns='http://jabber.org/features/iq-register'/>",
        when: Some(|c| c.registration.enabled),
    }],
    // After authentication: password change and account removal. Before
    // it, stream negotiation calls [`pre_auth`].
    iq: &[IqHandler {
        ns: NS_REGISTER,
        name: "query",
        get: Some(handle),
        set: Some(handle),
        no_account: false,
    }],
    config_section: Some("registration"),
    ..Module::EMPTY
};

fn fields(q: &Element) -> (Option<String>, Option<String>) {
    (
        q.child_text("username", NS_REGISTER),
        q.child_text("password", NS_REGISTER),
    )
}

fn map_err(e: AccountError) -> StanzaError {
    match e {
        AccountError::Exists(_) => Condition::Conflict.into(),
        AccountError::BadJid(_) | AccountError::BadPassword => Condition::NotAcceptable.into(),
        AccountError::UnknownDomain(_) | AccountError::Missing(_) => Condition::ItemNotFound.into(),
        AccountError::Store(e) => e.into(),
    }
}

/// Registration on a TLS stream before authentication.
pub async fn pre_auth(server: &Server, domain: &str, iq: &Element) -> Element {
    let reply = |r: Result<Option<Element>, StanzaError>| match r {
        Ok(p) => iq_result(iq, p),
        Err(e) => error_reply(iq, &e).unwrap_or_else(|| iq_result(iq, None)),
    };
    if !server.config.registration.enabled {
        return reply(Err(Condition::ServiceUnavailable.into()));
    }
    let Some(q) = iq.get_child("query", NS_REGISTER) else {
        return reply(Err(Condition::BadRequest.into()));
    };
    match iq.get_attr("type") {
        Some("get") => reply(Ok(Some(
            Element::new("query", NS_REGISTER)
                .child(
                    Element::new("instructions", NS_REGISTER)
                        .text("Choose a username and password."),
                )
                .child(Element::new("username", NS_REGISTER))
                .child(Element::new("password", NS_REGISTER)),
        ))),
        Some("set") => {
            let (Some(user), Some(pass)) = fields(q) else {
                return reply(Err(Condition::NotAcceptable.into()));
            };
            let jid =
                match accounts::account_jid(&format!("{user}@{domain}"), &server.config.domains) {
                    Ok(j) => j,
                    Err(_) => return reply(Err(Condition::JidMalformed.into())),
                };
            let r = accounts::create(
                &server.storage,
                jid.as_str(),
                &pass,
                server.config.auth.scram_iterations,
            )
            .await
            .map(|_| None)
            .map_err(map_err);
            if r.is_ok() {
                tracing::info!(account = %jid, "registered in-band");
                metrics::counter!("starling_accounts_registered_total").increment(1);
            }
            reply(r)
        }
        _ => reply(Err(Condition::BadRequest.into())),
    }
}

fn handle<'a>(ctx: &'a IqCtx<'a>) -> futures::future::BoxFuture<'a, IqResult> {
    async move {
        if !matches!(ctx.target, IqTarget::Server(_) | IqTarget::Own) {
            return Err(Condition::ServiceUnavailable.into());
        }
        let bare = ctx.origin.bare;
        let node = bare.split('@').next().unwrap_or_default();
        if !ctx.set {
            return Ok(Element::new("query", NS_REGISTER)
                .child(Element::new("registered", NS_REGISTER))
                .child(Element::new("username", NS_REGISTER).text(node))
                .into());
        }
        if ctx.payload.has_child("remove", NS_REGISTER) {
            accounts::delete(&ctx.server.storage, &ctx.server.config, bare)
                .await
                .map_err(map_err)?;
            // The result goes out first; then every session of the account
            // ends (XEP-0077 §3.2).
            let result = iq_result(ctx.iq, None);
            let _ = crate::session::im::deliver_to_full(ctx.server, ctx.origin.full, result);
            ctx.server
                .router
                .close_all(bare, StreamCondition::NotAuthorized);
            return Ok(IqReply::Sent);
        }
        let (user, pass) = fields(ctx.payload);
        let Some(pass) = pass else {
            return Err(Condition::BadRequest.into());
        };
        if user.is_some_and(|u| u != node) {
            return Err(Condition::NotAllowed.into());
        }
        accounts::set_password(
            &ctx.server.storage,
            bare,
            &pass,
            ctx.server.config.auth.scram_iterations,
        )
        .await
        .map_err(map_err)?;
        Ok(IqReply::EMPTY)
    }
    .boxed()
}
