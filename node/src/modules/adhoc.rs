//! XEP-0050 Ad-Hoc Commands offered by the server itself, and the
//! XEP-0133 Service Administration commands on them.
//!
//! Every served domain offers its commands at its own JID (and, as some
//! clients address them, at the requester's own bare JID): disco#items of
//! node `http://jabber.org/protocol/commands` lists those the requester
//! may run, disco#info of a command's node describes it, and an
//! `<iq type='set'><command/></iq>` runs it. Administrators come from the
//! configuration (`[admin]`, [`Config::is_admin`](crate::config::Config::is_admin)),
//! identical on every node; an administrator manages the accounts of the
//! domains it administers and no other.
//!
//! A command asks for zero or more forms (stages) and then runs. The
//! state of a command in progress (its stage and the values submitted so
//! far) lives on this node ([`Sessions`]), keyed by session id, bounded per
//! requester and expiring: a client's IQs all pass through its own
//! session's node, so no other node ever needs it. What the commands do
//! goes through the shared paths: accounts through `crate::accounts` (and
//! Raft), sessions and online users through the router and the replicated
//! routing table, so they act on the whole cluster.

use super::{IqCtx, IqHandler, IqResult, IqTarget, Module, NodeInfo, ServerNodes};
use crate::accounts::{self, AccountError};
use crate::router::At;
use crate::server::Server;
use crate::stanza::{Condition, NS_CLIENT, StanzaError, StreamCondition};
use crate::xml::Element;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
/// The FORM_TYPE of XEP-0133's forms and the prefix of its nodes.
pub const NS_ADMIN: &str = "http://jabber.org/protocol/admin";
const NS_DATA: &str = "jabber:x:data";
const NS_INFO: &str = super::disco::NS_INFO;
const NS_ITEMS: &str = super::disco::NS_ITEMS;

pub static MODULE: Module = Module {
    name: "adhoc",
    spec: "XEP-0050, XEP-0133",
    features: &[NS_COMMANDS],
    iq: &[IqHandler {
        ns: NS_COMMANDS,
        name: "command",
        get: None,
        set: Some(handle),
        no_account: false,
    }],
    server_nodes: Some(&ServerNodes {
        items: disco_items,
        info: disco_info,
    }),
    config_section: Some("admin"),
    ..Module::EMPTY
};

// --- commands -------------------------------------------------------------

/// Field values of submitted forms, by `var`, in submission order.
pub type Fields = Vec<(String, Vec<String>)>;

fn values<'f>(fields: &'f Fields, var: &str) -> &'f [String] {
    fields
        .iter()
        .rev()
        .find(|(v, _)| v == var)
        .map_or(&[], |(_, vals)| vals.as_slice())
}

fn first<'f>(fields: &'f Fields, var: &str) -> Option<&'f str> {
    values(fields, var)
        .first()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// The first value of a field the command cannot do without
/// (`<bad-payload/>` when it is missing or empty).
fn required<'f>(fields: &'f Fields, var: &str) -> Result<&'f str, Fail> {
    first(fields, var)
        .ok_or_else(|| Fail::Stanza(bad_payload(format!("the field {var} is required"))))
}

/// Who runs a command, where.
pub struct Run<'a> {
    pub server: &'a Server,
    /// The requester's bare JID.
    pub requester: &'a str,
    /// The domain the command was addressed to.
    pub domain: &'a str,
}

/// What a completed command answers: an info note and maybe a result
/// form.
struct Done {
    note: String,
    form: Option<Element>,
}

/// Why a command did not do what it was asked. XEP-0050 §4.6 and
/// XEP-0133 §5 name stanza errors for what is wrong with the request
/// itself (its action, session, payload, the requester's rights) and for
/// a conflict (an account that already exists); what else the command
/// could not do with well-formed input (a JID that is not valid or not
/// served here, an account that does not exist, passwords that differ)
/// completes the command with an error note, as XEP-0050 §3.4 has notes
/// for and as clients of XEP-0133 (Smack's suite) expect.
enum Fail {
    Stanza(StanzaError),
    Note(String),
}

impl From<StanzaError> for Fail {
    fn from(e: StanzaError) -> Self {
        Fail::Stanza(e)
    }
}

impl From<starling_cluster::StoreError> for Fail {
    fn from(e: starling_cluster::StoreError) -> Self {
        Fail::Stanza(e.into())
    }
}

type RunFn = for<'a> fn(&'a Run<'a>, &'a Fields) -> BoxFuture<'a, Result<Done, Fail>>;

struct Command {
    /// The command's node (XEP-0133's are `NS_ADMIN#name`).
    node: &'static str,
    name: &'static str,
    /// Only for administrators of the domain.
    admin: bool,
    /// Forms asked before it runs; 0: it runs on `execute`.
    stages: usize,
    /// `complete` is offered from the first stage on (the later stages are
    /// optional, e.g. a confirmation).
    early_complete: bool,
    /// The form of a stage, given the values submitted so far.
    form: fn(usize, &Fields) -> Element,
    /// Checks what a stage's form submitted before the command moves on
    /// to the next stage (`next`); `run` checks everything again.
    check: fn(&Run<'_>, usize, &Fields) -> Result<(), StanzaError>,
    run: RunFn,
}

static COMMANDS: &[Command] = &[
    Command {
        node: "ping",
        name: "Ping",
        admin: false,
        stages: 0,
        early_complete: false,
        form: no_form,
        check: no_check,
        run: run_ping,
    },
    Command {
        node: "uptime",
        name: "Get uptime",
        admin: false,
        stages: 0,
        early_complete: false,
        form: no_form,
        check: no_check,
        run: run_uptime,
    },
    Command {
        node: "http://jabber.org/protocol/admin#add-user",
        name: "Add a User",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_add_user,
        check: no_check,
        run: run_add_user,
    },
    Command {
        node: "http://jabber.org/protocol/admin#delete-user",
        name: "Delete a User",
        admin: true,
        stages: 2,
        early_complete: true,
        form: form_delete_user,
        check: check_accountjids,
        run: run_delete_user,
    },
    Command {
        node: "http://jabber.org/protocol/admin#disable-user",
        name: "Disable a User",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_disable,
        check: no_check,
        run: run_disable,
    },
    Command {
        node: "http://jabber.org/protocol/admin#reenable-user",
        name: "Re-Enable a User",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_reenable,
        check: no_check,
        run: run_reenable,
    },
    Command {
        node: "http://jabber.org/protocol/admin#end-user-session",
        name: "End User Session",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_accountjids,
        check: no_check,
        run: run_end_user_session,
    },
    Command {
        node: "http://jabber.org/protocol/admin#change-user-password",
        name: "Change User Password",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_change_password,
        check: no_check,
        run: run_change_password,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-user-roster",
        name: "Get User Roster",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_accountjid,
        check: no_check,
        run: run_get_user_roster,
    },
    Command {
        node: "http://jabber.org/protocol/admin#user-stats",
        name: "Get User Statistics",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_accountjid,
        check: no_check,
        run: run_user_stats,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-registered-users-num",
        name: "Get Number of Registered Users",
        admin: true,
        stages: 0,
        early_complete: false,
        form: no_form,
        check: no_check,
        run: run_registered_num,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-registered-users-list",
        name: "Get List of Registered Users",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_max_items,
        check: no_check,
        run: run_registered_list,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-disabled-users-num",
        name: "Get Number of Disabled Users",
        admin: true,
        stages: 0,
        early_complete: false,
        form: no_form,
        check: no_check,
        run: run_disabled_num,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-disabled-users-list",
        name: "Get List of Disabled Users",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_max_items,
        check: no_check,
        run: run_disabled_list,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-online-users-num",
        name: "Get Number of Online Users",
        admin: true,
        stages: 0,
        early_complete: false,
        form: no_form,
        check: no_check,
        run: run_online_num,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-online-users-list",
        name: "Get List of Online Users",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_max_items,
        check: no_check,
        run: run_online_list,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-active-users-num",
        name: "Get Number of Active Users",
        admin: true,
        stages: 0,
        early_complete: false,
        form: no_form,
        check: no_check,
        run: run_active_num,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-active-users",
        name: "Get List of Active Users",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_max_items,
        check: no_check,
        run: run_active_list,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-idle-users-num",
        name: "Get Number of Idle Users",
        admin: true,
        stages: 0,
        early_complete: false,
        form: no_form,
        check: no_check,
        run: run_idle_num,
    },
    Command {
        node: "http://jabber.org/protocol/admin#get-idle-users",
        name: "Get List of Idle Users",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_max_items,
        check: no_check,
        run: run_idle_list,
    },
    Command {
        node: "http://jabber.org/protocol/admin#announce",
        name: "Send Announcement to Online Users",
        admin: true,
        stages: 1,
        early_complete: false,
        form: form_announce,
        check: no_check,
        run: run_announce,
    },
];

fn command(node: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.node == node)
}

/// Whether `requester` may run `cmd` at `domain`.
fn may_run(server: &Server, cmd: &Command, requester: &str, domain: &str) -> bool {
    !cmd.admin || server.config.is_admin(requester, domain)
}

// --- forms ------------------------------------------------------------------

fn x(kind: &str) -> Element {
    Element::new("x", NS_DATA).attr("type", kind)
}

fn form_type() -> Element {
    Element::new("field", NS_DATA)
        .attr("var", "FORM_TYPE")
        .attr("type", "hidden")
        .child(Element::new("value", NS_DATA).text(NS_ADMIN))
}

fn field(var: &str, kind: &str, label: &str, required: bool) -> Element {
    let mut f = Element::new("field", NS_DATA)
        .attr("var", var)
        .attr("type", kind)
        .attr("label", label);
    if required {
        f = f.child(Element::new("required", NS_DATA));
    }
    f
}

fn with_values<'v>(mut f: Element, vals: impl IntoIterator<Item = &'v str>) -> Element {
    for v in vals {
        f = f.child(Element::new("value", NS_DATA).text(v));
    }
    f
}

fn admin_form(title: &str, instructions: &str) -> Element {
    x("form")
        .child(Element::new("title", NS_DATA).text(title))
        .child(Element::new("instructions", NS_DATA).text(instructions))
        .child(form_type())
}

fn result_form(fields: impl IntoIterator<Item = Element>) -> Element {
    let mut f = x("result").child(form_type());
    for el in fields {
        f = f.child(el);
    }
    f
}

fn no_form(_: usize, _: &Fields) -> Element {
    x("form")
}

fn no_check(_: &Run<'_>, _: usize, _: &Fields) -> Result<(), StanzaError> {
    Ok(())
}

fn form_add_user(_: usize, _: &Fields) -> Element {
    admin_form("Adding a User", "Fill out this form to add a user.")
        .child(field(
            "accountjid",
            "jid-single",
            "The Jabber ID for the account to be added",
            true,
        ))
        .child(field(
            "password",
            "text-private",
            "The password for this account",
            true,
        ))
        .child(field(
            "password-verify",
            "text-private",
            "Retype password",
            false,
        ))
}

/// One user: XEP-0133 names the field `accountjid`; some clients fill
/// `accountjids` for these commands, so the form has both and the
/// command takes whichever is given.
fn form_accountjid(_: usize, v: &Fields) -> Element {
    admin_form(
        "Choose a user",
        "Give the Jabber ID of the user (accountjid).",
    )
    .child(with_values(
        field(
            "accountjid",
            "jid-single",
            "The Jabber ID of the user",
            false,
        ),
        values(v, "accountjid").iter().map(String::as_str),
    ))
    .child(field(
        "accountjids",
        "jid-multi",
        "The Jabber ID of the user (alternative)",
        false,
    ))
}

fn form_change_password(_: usize, _: &Fields) -> Element {
    admin_form(
        "Changing a User Password",
        "Fill out this form to change a user's password.",
    )
    .child(field(
        "accountjid",
        "jid-single",
        "The Jabber ID for this account",
        true,
    ))
    .child(field(
        "password",
        "text-private",
        "The new password for this account",
        true,
    ))
}

fn form_accountjids(_: usize, v: &Fields) -> Element {
    admin_form(
        "Ending a User Session",
        "Fill out this form to end sessions: a bare JID ends all of the user's sessions, a full JID that one.",
    )
    .child(with_values(
        field("accountjids", "jid-multi", "The Jabber ID(s) whose sessions to end", true),
        values(v, "accountjids").iter().map(String::as_str),
    ))
}

fn form_delete_user(stage: usize, v: &Fields) -> Element {
    if stage == 0 {
        return admin_form(
            "Deleting a User",
            "Fill out this form to delete users (complete), or review the list first (next).",
        )
        .child(with_values(
            field(
                "accountjids",
                "jid-multi",
                "The Jabber ID(s) to delete",
                true,
            ),
            values(v, "accountjids").iter().map(String::as_str),
        ));
    }
    admin_form(
        "Deleting a User",
        "These accounts and all their data will be deleted: complete to confirm, prev to change the list.",
    )
    .child(with_values(
        field("accountjids", "jid-multi", "The Jabber ID(s) to delete", true),
        values(v, "accountjids").iter().map(String::as_str),
    ))
}

fn form_disable(_: usize, v: &Fields) -> Element {
    admin_form(
        "Disabling a User",
        "Fill out this form to disable users: their sessions end and they cannot log in until re-enabled; nothing of theirs is deleted.",
    )
    .child(with_values(
        field("accountjids", "jid-multi", "The Jabber ID(s) to disable", true),
        values(v, "accountjids").iter().map(String::as_str),
    ))
}

fn form_reenable(_: usize, v: &Fields) -> Element {
    admin_form(
        "Re-Enabling a User",
        "Fill out this form to re-enable users.",
    )
    .child(with_values(
        field(
            "accountjids",
            "jid-multi",
            "The Jabber ID(s) to re-enable",
            true,
        ),
        values(v, "accountjids").iter().map(String::as_str),
    ))
}

fn form_max_items(_: usize, _: &Fields) -> Element {
    let mut f = field(
        "max_items",
        "list-single",
        "Maximum number of items to show",
        false,
    );
    for o in ["25", "50", "75", "100", "150", "200", "none"] {
        f = f.child(
            Element::new("option", NS_DATA)
                .attr("label", o)
                .child(Element::new("value", NS_DATA).text(o)),
        );
    }
    admin_form("Listing users", "How many users to list at most.").child(f)
}

fn form_announce(_: usize, _: &Fields) -> Element {
    admin_form(
        "Making an Announcement",
        "Fill out this form to send a message to all users online at this domain.",
    )
    .child(field("subject", "text-single", "Subject", false))
    .child(field("announcement", "text-multi", "Announcement", true))
}

// --- checks -----------------------------------------------------------------

fn bad_payload(text: impl Into<String>) -> StanzaError {
    let mut e = StanzaError::with_app(
        Condition::BadRequest,
        Element::new("bad-payload", NS_COMMANDS),
    );
    e.text = Some(text.into());
    e
}

/// XEP-0050 §4.6: `<forbidden/>` and `<item-not-found/>` are of type
/// `cancel`.
fn cancel(condition: Condition) -> StanzaError {
    let mut e = StanzaError::new(condition);
    e.kind = Some("cancel");
    e
}

fn cmd_error(condition: Condition, specific: &str) -> StanzaError {
    StanzaError::with_app(condition, Element::new(specific, NS_COMMANDS))
}

/// An account named by a form: a bare JID (a full JID counts as its
/// bare JID) of a domain the requester administers.
fn managed_account(run: &Run<'_>, s: &str) -> Result<String, Fail> {
    let (bare, _) = session_jid(run, s)?;
    Ok(bare)
}

/// A user's bare or full JID at a domain the requester administers:
/// (bare, resource).
fn session_jid(run: &Run<'_>, s: &str) -> Result<(String, Option<String>), Fail> {
    let s = s.trim();
    let j = jid::Jid::new(s).map_err(|_| Fail::Note(format!("{s:?} is not a valid JID")))?;
    if j.node().is_none() {
        return Err(Fail::Note(format!("{s:?} is not a user's JID")));
    }
    let domain = j.domain().as_str();
    if !run.server.config.serves(domain) {
        return Err(Fail::Note(format!(
            "{s} is not a user of this service: domain {domain} is not served here"
        )));
    }
    if !run.server.config.is_admin(run.requester, domain) {
        let mut e = cancel(Condition::Forbidden);
        e.text = Some(format!("you do not administer the domain {domain}"));
        return Err(Fail::Stanza(e));
    }
    Ok((
        j.to_bare().to_string(),
        j.resource().map(|r| r.as_str().to_owned()),
    ))
}

/// The one account a form names: `accountjid` (XEP-0133), or the single
/// value of `accountjids` (which some clients fill for these commands).
fn one_account(run: &Run<'_>, v: &Fields) -> Result<String, Fail> {
    let given = first(v, "accountjid").or_else(|| first(v, "accountjids"));
    let Some(s) = given else {
        return Err(Fail::Stanza(bad_payload(
            "the field accountjid is required",
        )));
    };
    managed_account(run, s)
}

/// Every JID of the `accountjids` field (at least one).
fn many(v: &Fields) -> Result<Vec<&str>, Fail> {
    let list: Vec<&str> = values(v, "accountjids")
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        return Err(Fail::Stanza(bad_payload(
            "the field accountjids is required",
        )));
    }
    Ok(list)
}

fn stanza_only(r: Result<(), Fail>) -> Result<(), StanzaError> {
    match r {
        Ok(()) => Ok(()),
        Err(Fail::Stanza(e)) => Err(e),
        Err(Fail::Note(n)) => Err(bad_payload(n)),
    }
}

fn check_accountjids(run: &Run<'_>, _: usize, v: &Fields) -> Result<(), StanzaError> {
    stanza_only(existing_accounts(run, v).map(|_| ()))
}

fn account_error(e: AccountError) -> Fail {
    match e {
        AccountError::Store(e) => e.into(),
        AccountError::Missing(j) => Fail::Note(format!("User does not exist: {j}")),
        // XEP-0133 §5: a user that already exists is an error stanza.
        AccountError::Exists(j) => Fail::Stanza(StanzaError::with_text(
            Condition::Conflict,
            format!("User already exists: {j}"),
        )),
        e => Fail::Note(e.to_string()),
    }
}

const DONE: &str = "Operation finished successfully";

// --- runs -------------------------------------------------------------------

fn done(note: impl Into<String>, form: Option<Element>) -> Result<Done, Fail> {
    Ok(Done {
        note: note.into(),
        form,
    })
}

fn run_ping<'a>(_: &'a Run<'a>, _: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move { done("Pong", None) }.boxed()
}

fn run_uptime<'a>(run: &'a Run<'a>, _: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let secs = run.server.started.elapsed().as_secs();
        done(
            format!("This node has been running for {secs} seconds"),
            Some(x("result").child(with_values(
                field("uptime", "text-single", "Uptime (seconds)", false),
                [secs.to_string().as_str()],
            ))),
        )
    }
    .boxed()
}

fn run_add_user<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let jid = one_account(run, v)?;
        let password = required(v, "password")?;
        if let Some(again) = first(v, "password-verify")
            && again != password
        {
            return Err(Fail::Note("Passwords do not match".into()));
        }
        accounts::create(
            &run.server.storage,
            &jid,
            password,
            run.server.config.auth.scram_iterations,
        )
        .await
        .map_err(account_error)?;
        tracing::info!(account = %jid, admin = %run.requester, "account added (XEP-0133)");
        done(format!("{DONE}: account {jid} added"), None)
    }
    .boxed()
}

fn run_delete_user<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let jids = existing_accounts(run, v)?;
        for j in &jids {
            match accounts::delete(&run.server.storage, &run.server.config, j).await {
                Ok(()) | Err(AccountError::Missing(_)) => {}
                Err(e) => return Err(account_error(e)),
            }
            crate::routing::close_everywhere(run.server, j, None, StreamCondition::NotAuthorized);
            tracing::info!(account = %j, admin = %run.requester, "account deleted (XEP-0133)");
        }
        done(format!("{DONE}: deleted {}", jids.join(", ")), None)
    }
    .boxed()
}

/// The accounts `accountjids` names, all existing and administered by
/// the requester (checked before any is changed).
fn existing_accounts(run: &Run<'_>, v: &Fields) -> Result<Vec<String>, Fail> {
    let mut jids = Vec::new();
    for s in many(v)? {
        let j = managed_account(run, s)?;
        if !run.server.storage.account_exists(&j)? {
            return Err(account_error(AccountError::Missing(j)));
        }
        if !jids.contains(&j) {
            jids.push(j);
        }
    }
    Ok(jids)
}

fn run_disable<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let jids = existing_accounts(run, v)?;
        for j in &jids {
            accounts::set_disabled(&run.server.storage, j, true)
                .await
                .map_err(account_error)?;
            // XEP-0133 §4.3: disabling ends the user's sessions.
            crate::routing::close_everywhere(run.server, j, None, StreamCondition::NotAuthorized);
            tracing::info!(account = %j, admin = %run.requester, "account disabled (XEP-0133)");
        }
        done(format!("{DONE}: disabled {}", jids.join(", ")), None)
    }
    .boxed()
}

fn run_reenable<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let jids = existing_accounts(run, v)?;
        for j in &jids {
            accounts::set_disabled(&run.server.storage, j, false)
                .await
                .map_err(account_error)?;
            tracing::info!(account = %j, admin = %run.requester, "account re-enabled (XEP-0133)");
        }
        done(format!("{DONE}: re-enabled {}", jids.join(", ")), None)
    }
    .boxed()
}

fn run_disabled_num<'a>(run: &'a Run<'a>, _: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let n = run.server.storage.disabled_accounts(run.domain)?.len();
        done(
            DONE,
            Some(count_form(
                "disabledusersnum",
                "The number of disabled users",
                n,
            )),
        )
    }
    .boxed()
}

fn run_disabled_list<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let max = max_items(v)?;
        let mut list = run.server.storage.disabled_accounts(run.domain)?;
        list.sort_unstable();
        list.truncate(max);
        done(
            DONE,
            Some(list_form(
                "disableduserjids",
                "The list of all disabled users",
                &list,
            )),
        )
    }
    .boxed()
}

fn run_end_user_session<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let mut targets = Vec::new();
        for s in many(v)? {
            targets.push(session_jid(run, s)?);
        }
        let mut ended = 0;
        for (bare, resource) in &targets {
            ended += crate::routing::close_everywhere(
                run.server,
                bare,
                resource.as_deref(),
                StreamCondition::PolicyViolation,
            );
        }
        tracing::info!(admin = %run.requester, ended, "sessions ended (XEP-0133)");
        done(format!("{DONE}: {ended} session(s) ended"), None)
    }
    .boxed()
}

fn run_change_password<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let jid = one_account(run, v)?;
        let password = required(v, "password")?;
        accounts::set_password(
            &run.server.storage,
            &jid,
            password,
            run.server.config.auth.scram_iterations,
        )
        .await
        .map_err(account_error)?;
        tracing::info!(account = %jid, admin = %run.requester, "password changed (XEP-0133)");
        done(format!("{DONE}: password of {jid} changed"), None)
    }
    .boxed()
}

fn run_get_user_roster<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let jid = one_account(run, v)?;
        if !run.server.storage.account_exists(&jid)? {
            return Err(account_error(AccountError::Missing(jid)));
        }
        let mut query = Element::new("query", super::roster::NS_ROSTER);
        for item in run.server.storage.roster(&jid)? {
            query = query.child(crate::session::im::item_element(&item, false));
        }
        let form = result_form([with_values(
            field(
                "accountjid",
                "jid-single",
                "The Jabber ID of the user",
                false,
            ),
            [jid.as_str()],
        )])
        .child(query);
        done(DONE, Some(form))
    }
    .boxed()
}

fn run_user_stats<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let jid = one_account(run, v)?;
        if !run.server.storage.account_exists(&jid)? {
            return Err(account_error(AccountError::Missing(jid)));
        }
        let roster = run.server.storage.roster(&jid)?.len();
        let resources: Vec<String> = run
            .server
            .router
            .bound(&jid)
            .into_iter()
            .map(|b| b.resource.to_string())
            .collect();
        let form = result_form([
            with_values(
                field(
                    "accountjid",
                    "jid-single",
                    "The Jabber ID of the user",
                    false,
                ),
                [jid.as_str()],
            ),
            with_values(
                field("rostersize", "text-single", "Roster size", false),
                [roster.to_string().as_str()],
            ),
            with_values(
                field("onlineresources", "text-multi", "Online resources", false),
                resources.iter().map(String::as_str),
            ),
        ]);
        done(DONE, Some(form))
    }
    .boxed()
}

fn count_form(var: &str, label: &str, n: usize) -> Element {
    result_form([with_values(
        field(var, "text-single", label, false),
        [n.to_string().as_str()],
    )])
}

fn run_registered_num<'a>(run: &'a Run<'a>, _: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let n = run.server.storage.list_accounts(Some(run.domain))?.len();
        done(
            DONE,
            Some(count_form(
                "registeredusersnum",
                "The number of registered users",
                n,
            )),
        )
    }
    .boxed()
}

/// Which of the domain's online users a count or list is about.
#[derive(Clone, Copy)]
enum Who {
    Online,
    Active,
    Idle,
}

impl Who {
    fn pick(self, server: &Server, domain: &str) -> Vec<String> {
        online_users(server, domain)
            .into_iter()
            .filter(|(_, sessions)| match self {
                Who::Online => true,
                Who::Active => sessions.iter().any(|s| s.active),
                Who::Idle => !sessions.iter().any(|s| s.active),
            })
            .map(|(bare, _)| bare)
            .collect()
    }

    fn num(self) -> (&'static str, &'static str) {
        match self {
            Who::Online => ("onlineusersnum", "The number of online users"),
            Who::Active => ("activeusersnum", "The number of active users"),
            Who::Idle => ("idleusersnum", "The number of idle users"),
        }
    }

    fn list(self) -> (&'static str, &'static str) {
        match self {
            Who::Online => ("onlineuserjids", "The list of all online users"),
            Who::Active => ("activeuserjids", "The list of active users"),
            Who::Idle => ("idleuserjids", "The list of idle users"),
        }
    }
}

fn count_of<'a>(run: &'a Run<'a>, who: Who) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let n = who.pick(run.server, run.domain).len();
        let (var, label) = who.num();
        done(DONE, Some(count_form(var, label, n)))
    }
    .boxed()
}

fn run_online_num<'a>(run: &'a Run<'a>, _: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    count_of(run, Who::Online)
}

fn run_active_num<'a>(run: &'a Run<'a>, _: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    count_of(run, Who::Active)
}

fn run_idle_num<'a>(run: &'a Run<'a>, _: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    count_of(run, Who::Idle)
}

/// `max_items` of a listing form: a positive number or `none`.
fn max_items(v: &Fields) -> Result<usize, Fail> {
    match first(v, "max_items") {
        None | Some("none") => Ok(usize::MAX),
        Some(s) => s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Fail::Stanza(bad_payload(format!(
                "max_items: {s:?} is not a positive number"
            )))
        }),
    }
}

fn list_form(var: &str, label: &str, list: &[String]) -> Element {
    result_form([with_values(
        field(var, "jid-multi", label, false),
        list.iter().map(String::as_str),
    )])
}

fn list_of<'a>(run: &'a Run<'a>, v: &'a Fields, who: Who) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let max = max_items(v)?;
        let mut list = who.pick(run.server, run.domain);
        list.truncate(max);
        let (var, label) = who.list();
        done(DONE, Some(list_form(var, label, &list)))
    }
    .boxed()
}

fn run_online_list<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    list_of(run, v, Who::Online)
}

fn run_active_list<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    list_of(run, v, Who::Active)
}

fn run_idle_list<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    list_of(run, v, Who::Idle)
}

fn run_registered_list<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let max = max_items(v)?;
        let mut list = run.server.storage.list_accounts(Some(run.domain))?;
        list.sort_unstable();
        list.truncate(max);
        done(
            DONE,
            Some(list_form(
                "registereduserjids",
                "The list of all users",
                &list,
            )),
        )
    }
    .boxed()
}

fn run_announce<'a>(run: &'a Run<'a>, v: &'a Fields) -> BoxFuture<'a, Result<Done, Fail>> {
    async move {
        let text = values(v, "announcement").join("\n");
        if text.trim().is_empty() {
            return Err(Fail::Stanza(bad_payload(
                "the field announcement is required",
            )));
        }
        let subject = first(v, "subject");
        let mut sent = 0;
        for (bare, sessions) in online_users(run.server, run.domain) {
            for s in sessions {
                let full = format!("{bare}/{}", s.resource);
                let mut m = Element::new("message", NS_CLIENT)
                    .attr("from", run.domain)
                    .attr("to", full.as_str())
                    .attr("type", "headline")
                    .attr("id", uuid::Uuid::new_v4().to_string());
                if let Some(s) = subject {
                    m = m.child(Element::new("subject", NS_CLIENT).text(s));
                }
                m = m.child(Element::new("body", NS_CLIENT).text(text.as_str()));
                let xml: Arc<str> = m.to_stream_xml(NS_CLIENT).into();
                if run.server.router.send(&bare, &s.resource, &s.at, &xml) {
                    sent += 1;
                }
            }
        }
        tracing::info!(domain = %run.domain, admin = %run.requester, sent, "announcement sent (XEP-0133)");
        done(format!("{DONE}: sent to {sent} session(s)"), None)
    }
    .boxed()
}

/// A session of an online user.
pub struct Online {
    pub resource: String,
    pub at: At,
    /// Available, and not `away` or `xa` (XEP-0133's "active" as opposed
    /// to "idle").
    pub active: bool,
}

/// Whether a session's last presence counts as active.
fn active(available: bool, presence: Option<&Element>) -> bool {
    available
        && !presence
            .and_then(|p| p.child_text("show", NS_CLIENT))
            .is_some_and(|s| s == "away" || s == "xa")
}

/// The users of `domain` with a session anywhere in the cluster, sorted
/// by bare JID, and their sessions ([`Router::sessions_of_domain`](crate::router::Router::sessions_of_domain)).
pub fn online_users(
    server: &Server,
    domain: &str,
) -> std::collections::BTreeMap<String, Vec<Online>> {
    let mut out: std::collections::BTreeMap<String, Vec<Online>> = Default::default();
    for s in server.router.sessions_of_domain(domain) {
        out.entry(s.bare).or_default().push(Online {
            resource: s.resource.to_string(),
            active: active(s.available, s.presence.as_ref()),
            at: s.at,
        });
    }
    out
}

// --- sessions -----------------------------------------------------------------

/// A command in progress.
struct Live {
    /// The requester's full JID: only it may continue the session.
    owner: String,
    node: &'static str,
    domain: String,
    stage: usize,
    values: Fields,
    created: Instant,
    touched: Instant,
}

enum Slot {
    Live(Live),
    /// Completed, canceled, replaced or timed out (kept a while so that a
    /// late request gets `<session-expired/>`, not `<bad-sessionid/>`).
    Ended {
        owner: String,
        at: Instant,
    },
}

impl Slot {
    fn owner(&self) -> &str {
        match self {
            Slot::Live(l) => &l.owner,
            Slot::Ended { owner, .. } => owner,
        }
    }
}

/// This node's command sessions, by session id. Only administrators open
/// sessions that last (non-admin commands run on `execute`), so the map
/// stays small; it is swept whenever a session starts.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Slot>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session id for `owner`, whose open sessions are capped at
    /// `max` (the oldest ends).
    fn start(&self, live: Live, max: usize, timeout: Duration) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let mut map = self.lock();
        let now = Instant::now();
        // Sweep: live sessions past the timeout end, ended ones are
        // forgotten after another timeout.
        map.retain(|_, s| match s {
            Slot::Ended { at, .. } => now.duration_since(*at) < timeout,
            Slot::Live(_) => true,
        });
        for s in map.values_mut() {
            if let Slot::Live(l) = s
                && now.duration_since(l.touched) >= timeout
            {
                *s = Slot::Ended {
                    owner: std::mem::take(&mut l.owner),
                    at: now,
                };
            }
        }
        loop {
            let open: Vec<(&String, Instant)> = map
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Live(l) if l.owner == live.owner => Some((k, l.created)),
                    _ => None,
                })
                .collect();
            if open.len() < max {
                break;
            }
            let Some(oldest) = open
                .iter()
                .min_by_key(|(_, c)| *c)
                .map(|(k, _)| (*k).clone())
            else {
                break;
            };
            map.insert(
                oldest,
                Slot::Ended {
                    owner: live.owner.clone(),
                    at: now,
                },
            );
        }
        // Ended sessions of one owner are bounded too.
        let ended: Vec<(String, Instant)> = map
            .iter()
            .filter_map(|(k, s)| match s {
                Slot::Ended { owner, at } if *owner == live.owner => Some((k.clone(), *at)),
                _ => None,
            })
            .collect();
        if ended.len() > 4 * max {
            let mut ended = ended;
            ended.sort_by_key(|(_, at)| *at);
            for (k, _) in ended.iter().take(ended.len() - 4 * max) {
                map.remove(k);
            }
        }
        map.insert(id.clone(), Slot::Live(live));
        id
    }

    /// Takes the session `id` of `owner` for `node` out of the map to
    /// work on it (put it back with [`Sessions::put`] or end it).
    fn take(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        timeout: Duration,
    ) -> Result<Live, StanzaError> {
        let mut map = self.lock();
        let Some(slot) = map.get(id).filter(|s| s.owner() == owner) else {
            return Err(cmd_error(Condition::BadRequest, "bad-sessionid"));
        };
        match slot {
            Slot::Ended { .. } => Err(cmd_error(Condition::NotAllowed, "session-expired")),
            Slot::Live(l) if l.node != node => {
                Err(cmd_error(Condition::BadRequest, "bad-sessionid"))
            }
            Slot::Live(l) if l.touched.elapsed() >= timeout => {
                map.insert(
                    id.to_owned(),
                    Slot::Ended {
                        owner: owner.to_owned(),
                        at: Instant::now(),
                    },
                );
                Err(cmd_error(Condition::NotAllowed, "session-expired"))
            }
            Slot::Live(_) => match map.insert(
                id.to_owned(),
                Slot::Ended {
                    owner: owner.to_owned(),
                    at: Instant::now(),
                },
            ) {
                Some(Slot::Live(l)) => Ok(l),
                _ => Err(cmd_error(Condition::BadRequest, "bad-sessionid")),
            },
        }
    }

    fn put(&self, id: &str, mut live: Live) {
        live.touched = Instant::now();
        self.lock().insert(id.to_owned(), Slot::Live(live));
    }

    fn end(&self, id: &str, owner: &str) {
        self.lock().insert(
            id.to_owned(),
            Slot::Ended {
                owner: owner.to_owned(),
                at: Instant::now(),
            },
        );
    }
}

// --- protocol -----------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Execute,
    Next,
    Prev,
    Complete,
    Cancel,
}

impl Action {
    fn parse(s: Option<&str>) -> Result<Action, StanzaError> {
        Ok(match s {
            None | Some("execute") => Action::Execute,
            Some("next") => Action::Next,
            Some("prev") => Action::Prev,
            Some("complete") => Action::Complete,
            Some("cancel") => Action::Cancel,
            Some(_) => return Err(cmd_error(Condition::BadRequest, "malformed-action")),
        })
    }
}

/// What a stage allows: (prev, next, complete), and the default action.
fn allowed(cmd: &Command, stage: usize) -> ([bool; 3], Action) {
    let last = stage + 1 >= cmd.stages;
    let complete = last || cmd.early_complete;
    let default = if complete {
        Action::Complete
    } else {
        Action::Next
    };
    ([stage > 0, !last, complete], default)
}

fn actions(cmd: &Command, stage: usize) -> Element {
    let ([prev, next, complete], default) = allowed(cmd, stage);
    let mut a = Element::new("actions", NS_COMMANDS).attr(
        "execute",
        if default == Action::Complete {
            "complete"
        } else {
            "next"
        },
    );
    for (on, name) in [(prev, "prev"), (next, "next"), (complete, "complete")] {
        if on {
            a = a.child(Element::new(name, NS_COMMANDS));
        }
    }
    a
}

fn reply(cmd: &Command, sessionid: &str, status: &str) -> Element {
    Element::new("command", NS_COMMANDS)
        .attr("node", cmd.node)
        .attr("sessionid", sessionid)
        .attr("status", status)
}

/// The command completed without doing what was asked, and says why.
fn failed(cmd: &Command, sessionid: &str, why: String) -> Element {
    reply(cmd, sessionid, "completed").child(
        Element::new("note", NS_COMMANDS)
            .attr("type", "error")
            .text(why),
    )
}

fn completed(cmd: &Command, sessionid: &str, done: Done) -> Element {
    metrics::counter!("starling_adhoc_commands_total", "node" => cmd.node).increment(1);
    let mut c = reply(cmd, sessionid, "completed").child(
        Element::new("note", NS_COMMANDS)
            .attr("type", "info")
            .text(done.note),
    );
    if let Some(f) = done.form {
        c = c.child(f);
    }
    c
}

/// A language tag (RFC 5646's shape: letters, then `-`-separated
/// subtags of letters and digits).
fn valid_lang(s: &str) -> bool {
    let mut parts = s.split('-');
    let first_ok = parts
        .next()
        .is_some_and(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    first_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The values of the data form a stage submitted, checked against that
/// stage's form: a submit form (of XEP-0133's FORM_TYPE when it says
/// one), every required field given (now or at an earlier stage), one
/// value for single-valued fields. What the values mean (a JID that is
/// not valid, an account that does not exist) is the command's to judge.
fn submitted(payload: &Element, form: &Element, prior: &Fields) -> Result<Fields, StanzaError> {
    let Some(x) = payload.get_child("x", NS_DATA) else {
        // Nothing submitted: fine when the stage asks nothing that is
        // still unanswered (a review stage, a listing's optional limit).
        let empty = Element::new("x", NS_DATA).attr("type", "submit");
        return submitted(
            &Element::new("command", NS_COMMANDS).child(empty),
            form,
            prior,
        )
        .map_err(|_| bad_payload("a submitted data form (jabber:x:data) is required"));
    };
    if x.get_attr("type") != Some("submit") {
        return Err(bad_payload("the data form must be of type 'submit'"));
    }
    let mut fields: Fields = Vec::new();
    for f in x.elements().filter(|e| e.is("field", NS_DATA)) {
        let Some(var) = f.get_attr("var") else {
            continue;
        };
        let vals = f
            .elements()
            .filter(|e| e.is("value", NS_DATA))
            .map(Element::text_content)
            .collect();
        fields.push((var.to_owned(), vals));
    }
    if let Some(t) = first(&fields, "FORM_TYPE")
        && t != NS_ADMIN
    {
        return Err(bad_payload(format!("FORM_TYPE {t:?} is not {NS_ADMIN}")));
    }
    for f in form.elements().filter(|e| e.is("field", NS_DATA)) {
        let Some(var) = f.get_attr("var") else {
            continue;
        };
        if var == "FORM_TYPE" {
            continue;
        }
        let vals = values(&fields, var);
        let answered = |vals: &[String]| vals.iter().any(|v| !v.trim().is_empty());
        // A required field answered at an earlier stage (and shown again
        // for review) need not be sent again.
        if f.has_child("required", NS_DATA) && !answered(vals) && !answered(values(prior, var)) {
            return Err(bad_payload(format!("the required field {var} is missing")));
        }
        let single = matches!(
            f.get_attr("type"),
            Some("jid-single" | "text-single" | "text-private" | "list-single" | "boolean")
        );
        if single && vals.len() > 1 {
            return Err(bad_payload(format!("the field {var} takes one value")));
        }
    }
    Ok(fields)
}

fn merge(into: &mut Fields, new: Fields) {
    for (var, vals) in new {
        if var == "FORM_TYPE" {
            continue;
        }
        into.retain(|(v, _)| *v != var);
        into.push((var, vals));
    }
}

/// The domain whose commands an IQ addresses.
fn addressed<'a>(ctx: &'a IqCtx<'a>) -> Result<&'a str, StanzaError> {
    match ctx.target {
        IqTarget::Server(d) => Ok(d),
        IqTarget::Own => ctx
            .origin
            .bare
            .rsplit_once('@')
            .map(|(_, d)| d)
            .ok_or_else(|| Condition::ServiceUnavailable.into()),
        IqTarget::Account(_) | IqTarget::NoAccount(_) => Err(Condition::ServiceUnavailable.into()),
    }
}

fn handle<'a>(ctx: &'a IqCtx<'a>) -> BoxFuture<'a, IqResult> {
    async move {
        let domain = addressed(ctx)?;
        let c = ctx.payload;
        let Some(node) = c.get_attr("node") else {
            return Err(StanzaError::with_text(
                Condition::BadRequest,
                "the command has no node",
            ));
        };
        let action = Action::parse(c.get_attr("action"))?;
        if let Some(lang) = c.get_attr("xml:lang").or(ctx.iq.get_attr("xml:lang"))
            && !valid_lang(lang)
        {
            return Err(cmd_error(Condition::BadRequest, "bad-locale"));
        }
        let Some(cmd) = command(node) else {
            return Err(Condition::ItemNotFound.into());
        };
        let requester = ctx.origin.bare;
        if !may_run(ctx.server, cmd, requester, domain) {
            return Err(cancel(Condition::Forbidden));
        }
        let run = Run {
            server: ctx.server,
            requester,
            domain,
        };
        let cfg = &ctx.server.config.admin;
        let timeout = Duration::from_secs(cfg.session_timeout_secs);
        let sessions = &ctx.server.adhoc;
        let owner = ctx.origin.full;
        let Some(sid) = c.get_attr("sessionid") else {
            if action != Action::Execute {
                return Err(cmd_error(Condition::BadRequest, "bad-sessionid"));
            }
            let now = Instant::now();
            let live = Live {
                owner: owner.to_owned(),
                node: cmd.node,
                domain: domain.to_owned(),
                stage: 0,
                values: Vec::new(),
                created: now,
                touched: now,
            };
            if cmd.stages == 0 {
                let id = format!("{:032x}", rand::random::<u128>());
                return match (cmd.run)(&run, &live.values).await {
                    Ok(done) => Ok(completed(cmd, &id, done).into()),
                    Err(Fail::Note(n)) => Ok(failed(cmd, &id, n).into()),
                    Err(Fail::Stanza(e)) => Err(e),
                };
            }
            let form = (cmd.form)(0, &live.values);
            let id = sessions.start(live, cfg.max_sessions, timeout);
            return Ok(reply(cmd, &id, "executing")
                .child(actions(cmd, 0))
                .child(form)
                .into());
        };
        let mut live = sessions.take(sid, owner, cmd.node, timeout)?;
        if live.domain != domain {
            sessions.put(sid, live);
            return Err(cmd_error(Condition::BadRequest, "bad-sessionid"));
        }
        let ([prev, next, complete], default) = allowed(cmd, live.stage);
        let action = if action == Action::Execute {
            default
        } else {
            action
        };
        let permitted = match action {
            Action::Prev => prev,
            Action::Next => next,
            Action::Complete => complete,
            Action::Cancel | Action::Execute => true,
        };
        if !permitted {
            sessions.put(sid, live);
            return Err(cmd_error(Condition::BadRequest, "bad-action"));
        }
        match action {
            Action::Cancel => {
                sessions.end(sid, owner);
                Ok(reply(cmd, sid, "canceled").into())
            }
            Action::Prev => {
                live.stage -= 1;
                let stage = live.stage;
                let form = (cmd.form)(stage, &live.values);
                sessions.put(sid, live);
                Ok(reply(cmd, sid, "executing")
                    .child(actions(cmd, stage))
                    .child(form)
                    .into())
            }
            Action::Next | Action::Complete | Action::Execute => {
                let stage_form = (cmd.form)(live.stage, &live.values);
                let step = async {
                    let fields = submitted(c, &stage_form, &live.values)?;
                    let mut all = live.values.clone();
                    merge(&mut all, fields);
                    if action == Action::Next {
                        (cmd.check)(&run, live.stage, &all)?;
                    }
                    Ok::<Fields, StanzaError>(all)
                };
                let all = match step.await {
                    Ok(all) => all,
                    Err(e) => {
                        // The session stays at its stage: the client may
                        // correct the form and submit it again.
                        sessions.put(sid, live);
                        return Err(e);
                    }
                };
                if action == Action::Next {
                    live.values = all;
                    live.stage += 1;
                    let stage = live.stage;
                    let form = (cmd.form)(stage, &live.values);
                    sessions.put(sid, live);
                    return Ok(reply(cmd, sid, "executing")
                        .child(actions(cmd, stage))
                        .child(form)
                        .into());
                }
                match (cmd.run)(&run, &all).await {
                    Ok(done) => {
                        sessions.end(sid, owner);
                        Ok(completed(cmd, sid, done).into())
                    }
                    Err(Fail::Note(n)) => {
                        sessions.end(sid, owner);
                        Ok(failed(cmd, sid, n).into())
                    }
                    Err(Fail::Stanza(e)) => {
                        // Nothing was done: the client may correct the
                        // form and submit it again.
                        sessions.put(sid, live);
                        Err(e)
                    }
                }
            }
        }
    }
    .boxed()
}

// --- disco --------------------------------------------------------------------

fn disco_items(
    server: &Server,
    domain: &str,
    at: &str,
    requester: &str,
    node: &str,
) -> Option<Vec<Element>> {
    if node != NS_COMMANDS {
        // A command's node is a leaf: no items, but a known node.
        return command(node).map(|_| Vec::new());
    }
    Some(
        COMMANDS
            .iter()
            .filter(|c| may_run(server, c, requester, domain))
            .map(|c| {
                Element::new("item", NS_ITEMS)
                    .attr("jid", at)
                    .attr("node", c.node)
                    .attr("name", c.name)
            })
            .collect(),
    )
}

fn disco_info(server: &Server, domain: &str, requester: &str, node: &str) -> Option<NodeInfo> {
    let identity = |kind: &str, name: &str| {
        Element::new("identity", NS_INFO)
            .attr("category", "automation")
            .attr("type", kind)
            .attr("name", name)
    };
    let feature = |var: &str| Element::new("feature", NS_INFO).attr("var", var);
    if node == NS_COMMANDS {
        return Some(Ok(vec![
            identity("command-list", "Commands"),
            feature(NS_COMMANDS),
            feature(NS_INFO),
            feature(NS_ITEMS),
        ]));
    }
    let cmd = command(node)?;
    if !may_run(server, cmd, requester, domain) {
        return Some(Err(cancel(Condition::Forbidden)));
    }
    Some(Ok(vec![
        identity("command-node", cmd.name),
        feature(NS_COMMANDS),
        feature(NS_DATA),
        feature(NS_INFO),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags() {
        for ok in ["en", "en-GB", "zh-Hant-TW", "de-CH-1996", "x-klingon"] {
            assert!(valid_lang(ok), "{ok}");
        }
        for bad in ["", "-", "en-", "en_GB", "!!", "abcdefghi", "en--GB"] {
            assert!(!valid_lang(bad), "{bad}");
        }
    }

    #[test]
    fn actions_follow_the_stages() {
        let add = command(&format!("{NS_ADMIN}#add-user")).unwrap();
        assert_eq!(allowed(add, 0), ([false, false, true], Action::Complete));
        let del = command(&format!("{NS_ADMIN}#delete-user")).unwrap();
        assert_eq!(allowed(del, 0), ([false, true, true], Action::Complete));
        assert_eq!(allowed(del, 1), ([true, false, true], Action::Complete));
    }

    #[test]
    fn submitted_forms_are_checked_against_the_stage() {
        let form = form_add_user(0, &Vec::new());
        let submit = |fields: &str| {
            let xml = format!(
                "<command xmlns='{NS_COMMANDS}'><x xmlns='{NS_DATA}' type='submit'>{fields}</x></command>"
            );
            crate::xml::parse_element(xml.as_bytes(), &[], &Default::default()).unwrap()
        };
        let field = |v: &str, val: &str| format!("<field var='{v}'><value>{val}</value></field>");
        let good = submit(&(field("accountjid", "a@localhost") + &field("password", "pw")));
        let f = submitted(&good, &form, &Vec::new()).unwrap();
        assert_eq!(first(&f, "accountjid"), Some("a@localhost"));
        let missing = submit(&field("accountjid", "a@localhost"));
        assert!(submitted(&missing, &form, &Vec::new()).is_err());
        let twice = submit(
            &("<field var='accountjid'><value>a@localhost</value><value>b@localhost</value></field>"
                .to_owned() + &field("password", "pw")),
        );
        assert!(
            submitted(&twice, &form, &Vec::new()).is_err(),
            "a jid-single with two values"
        );
        // A JID that is not valid is the command's to report (an error note).
        let bad_jid = submit(&(field("accountjid", "a@b@c") + &field("password", "pw")));
        assert!(submitted(&bad_jid, &form, &Vec::new()).is_ok());
    }
}
