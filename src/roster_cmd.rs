//! `cairn roster`: adding and removing members, signed by a quorum of admins.
//!
//! ```text
//!   admin 1: cairn roster add ... --key a1.key --proposal change.entry   (1 of 2: written to the file)
//!   admin 2: cairn roster sign --proposal change.entry --key a2.key      (2 of 2: appended)
//! ```
//!
//! The change names the roster epoch it applies to, so a signed change cannot be replayed later;
//! the ledger's validity rule checks the quorum. Keys never leave their machines: the proposal file
//! carries only the entry and the signatures so far.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use ledger::{Body, Change, Entry, Member, PublicKey, Reader, Role, RosterChange};

use crate::Outcome;
use crate::store_cmd::absolute_url;

/// Largest proposal file read.
const MAX_PROPOSAL_BYTES: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum RosterCommand {
    /// Propose adding a member (and sign the proposal).
    Add {
        #[command(flatten)]
        common: Common,
        /// The new member's public key (what `cairn keygen` printed on their machine).
        #[arg(long)]
        member: String,
        /// Its organisation.
        #[arg(long)]
        organisation: String,
        /// Its role: admin, worker or validator.
        #[arg(long)]
        role: String,
    },
    /// Propose removing a member (and sign the proposal).
    Remove {
        #[command(flatten)]
        common: Common,
        /// The member's public key.
        #[arg(long)]
        member: String,
    },
    /// Show a proposal another admin wrote, then sign it (with --yes, or after typing y at a
    /// terminal); appends it once the quorum is reached.
    Sign {
        #[command(flatten)]
        common: Common,
        /// Sign without asking (the change is still printed first).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// The run's store.
    #[arg(long)]
    store: String,
    /// Admin key files to sign with (repeat for several).
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// The proposal file: written while signatures are missing, read by `sign`.
    #[arg(long)]
    proposal: Option<PathBuf>,
}

pub async fn run(cmd: RosterCommand) -> anyhow::Result<Outcome> {
    let mut confirmed = true;
    let (common, change) = match cmd {
        RosterCommand::Add { common, member, organisation, role } => {
            let role = Role::from_name(&role)
                .with_context(|| format!("--role must be admin, worker or validator, not {role:?}"))?;
            let key = parse_key(&member)?;
            (common, Some(Change::Add(Member { key, organisation, role })))
        }
        RosterCommand::Remove { common, member } => (common, Some(Change::Remove(parse_key(&member)?))),
        RosterCommand::Sign { common, yes } => {
            confirmed = yes;
            (common, None)
        }
    };
    let url = absolute_url(&common.store)?;
    let store = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    let run_id = ledger::genesis_run_id(&store).await.with_context(|| format!("reading the genesis of {url}"))?;
    let reader = Reader::replay(store.clone(), run_id).await.with_context(|| format!("reading the ledger of {url}"))?;
    let state = reader.state();
    let is_admin = |key: &PublicKey| state.member(key).is_some_and(|m| m.role == Role::Admin);
    let mut entry = match change {
        Some(change) => {
            let body = Body::RosterChange(RosterChange { epoch: state.roster_epoch(), change });
            Entry { run_id, body, signatures: Vec::new() }
        }
        None => {
            let path = common.proposal.as_deref().context("roster sign needs --proposal FILE")?;
            read_proposal(path)?
        }
    };
    anyhow::ensure!(entry.run_id == run_id, "the proposal is for run {}, this store holds run {run_id}", entry.run_id);
    let Body::RosterChange(change) = &entry.body else { anyhow::bail!("the proposal is not a roster change") };
    anyhow::ensure!(
        change.epoch == state.roster_epoch(),
        "the proposal is for roster epoch {}, the roster is at epoch {} (a change landed since): propose again",
        change.epoch,
        state.roster_epoch()
    );
    print!("{}", describe(change, &entry, state));
    if !confirmed && !confirm()? {
        println!("roster: not signed");
        return Ok(Outcome::Failed);
    }
    for path in &common.keys {
        let key = ledger::read_key_file(path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(is_admin(&key.public()), "{} ({}) is not an admin of this run", path.display(), key.public());
        entry.cosign(&key)?;
    }
    let admins = entry.signatures.iter().filter(|s| is_admin(&s.key)).count();
    let quorum = usize::from(state.quorum().max(1));
    if admins < quorum {
        let path = common.proposal.as_deref().context(format!(
            "{admins} of {quorum} admin signatures: pass --proposal FILE to write the proposal for the other admins"
        ))?;
        std::fs::write(path, entry.encode()).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "roster: {admins} of {quorum} admin signatures; the other admins run: cairn roster sign --store {url} --proposal {} --key THEIR.key",
            path.display()
        );
        return Ok(Outcome::Ok);
    }
    let mut appender = ledger::Appender::starting_at(store.clone(), reader.next_seq());
    let seq = appender.append(std::slice::from_ref(&entry)).await.context("appending the roster change")?;
    let mut after = reader;
    after.poll().await?;
    let logged = after.entries().iter().find(|e| e.pos.seq == seq).context("the appended slot is not readable")?;
    match &logged.validity {
        ledger::Validity::Accept => {
            println!("roster: applied at slot {seq}; epoch {}", after.state().roster_epoch());
            Ok(Outcome::Ok)
        }
        ledger::Validity::Void(why) => {
            println!("roster: FAIL the change landed at slot {seq} but is void: {why}");
            Ok(Outcome::Failed)
        }
    }
}

/// The change in words: what it does, who signed it so far, and the roster it leaves.
fn describe(change: &RosterChange, entry: &Entry, state: &ledger::LedgerState) -> String {
    let who = |key: &PublicKey| match state.member(key) {
        Some(m) => format!("{} {key} (organisation {:?})", m.role.name(), m.organisation),
        None => format!("{key} (not a member)"),
    };
    let mut roster: Vec<Member> = state.roster().values().cloned().collect();
    let what = match &change.change {
        Change::Add(m) => {
            roster.retain(|r| r.key != m.key);
            roster.push(m.clone());
            format!("add {} {} (organisation {:?})", m.role.name(), m.key, m.organisation)
        }
        Change::Remove(key) => {
            roster.retain(|r| r.key != *key);
            format!("remove {}", who(key))
        }
        Change::SetQuorum(q) => format!("set the admin quorum from {} to {q}", state.quorum()),
    };
    let mut orgs: Vec<&str> = roster.iter().map(|m| m.organisation.as_str()).collect();
    orgs.sort_unstable();
    orgs.dedup();
    let count = |role: Role| roster.iter().filter(|m| m.role == role).count();
    let mut text = format!("roster change at epoch {}: {what}\n", change.epoch);
    for s in &entry.signatures {
        text += &format!("  signed by {}\n", who(&s.key));
    }
    text += &format!(
        "  afterwards: {} members ({} admins, {} workers, {} validators) in {} organisations; \
         rounds need {} organisations\n",
        roster.len(),
        count(Role::Admin),
        count(Role::Worker),
        count(Role::Validator),
        orgs.len(),
        state.rounds().quorum()
    );
    text
}

/// Asks at a terminal; refuses when nobody can answer.
fn confirm() -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "not signed: read the change above, then run again with --yes to sign it"
    );
    print!("sign this change? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn parse_key(hex: &str) -> anyhow::Result<PublicKey> {
    hex.trim().parse::<PublicKey>().map_err(|e| anyhow::anyhow!("--member {hex:?} is not a public key: {e}"))
}

fn read_proposal(path: &Path) -> anyhow::Result<Entry> {
    let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    anyhow::ensure!(size <= MAX_PROPOSAL_BYTES, "{} is {size} bytes, not a proposal", path.display());
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let entry = Entry::decode(&bytes).map_err(|e| anyhow::anyhow!("{} is not a proposal: {e}", path.display()))?;
    if let Some(bad) = entry.bad_signers().first() {
        anyhow::bail!("{}: the signature by {bad} does not verify", path.display());
    }
    Ok(entry)
}
