//! Accounts and transactions as types, checked when they are built (the first of the two places
//! every invariant is enforced; the database schema is the second).
//!
//! An amount moves between accounts as signed postings in millisatoshis: positive adds to an
//! account's balance, negative takes from it. A [`Transaction`] exists only if its postings sum to
//! exactly zero, each is non-zero and within ±21 million BTC, no account appears twice, and its
//! idempotency key is set. Every balance is the sum of its postings, so all balances together sum
//! to zero: money is only ever moved, and where it enters (mined coins) an account that may go
//! negative records it (`platform/mined`).

use std::fmt;
use units::MilliSats;

/// 21 million BTC in millisatoshis: no amount or balance exceeds it.
pub const MAX_MSAT: i64 = 2_100_000_000_000_000_000;
/// Most postings in one transaction (a block's PPLNS split may pay many users).
pub const POSTINGS_MAX: usize = 100_000;
/// Longest idempotency key and account name, in bytes.
pub const KEY_BYTES_MAX: usize = 200;
/// Longest memo, in bytes.
pub const MEMO_BYTES_MAX: usize = 500;

/// What a user account holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserBucket {
    /// Spendable, payable.
    Available,
    /// Earned from blocks not yet 100 confirmations deep.
    Immature,
    /// Paid to the owner directly in a coinbase output of a block not yet 100 confirmations deep
    /// (no custody: the coins are the owner's on chain; the pool never holds them). At maturity it
    /// moves to `platform/paid-out`; if the block leaves the best chain it is reversed.
    Coinbase,
    /// Held for a marketplace order.
    Escrow(u64),
}

/// The platform's own accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlatformAccount {
    /// Where mined coins enter the books (negative: the total mined).
    Mined,
    /// Pool fees earned.
    Fees,
    /// The pool's reserve: PPS/FPPS credits are paid from it and the blocks the pool finds refill it
    /// (negative: the operator's capital carrying the variance); rounding remainders.
    PoolReserve,
    /// Block rewards not yet matured (the pool's side of users' immature credits).
    CoinbaseInFlight,
    /// Payouts broadcast but not yet confirmed.
    PayoutsInFlight,
    /// Coins paid out on chain and confirmed (only grows).
    PaidOut,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// A user's bucket; the owner is a payout address or user id.
    User {
        /// Owner (address or user id; no `/`).
        owner: String,
        /// Which bucket.
        bucket: UserBucket,
    },
    /// A platform account.
    Platform(PlatformAccount),
}

/// Why an account name or transaction is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The idempotency key is empty or too long.
    #[error("idempotency key must be 1..={KEY_BYTES_MAX} bytes")]
    Key,
    /// The memo is too long.
    #[error("memo longer than {MEMO_BYTES_MAX} bytes")]
    Memo,
    /// Fewer than two postings, or more than [`POSTINGS_MAX`].
    #[error("a transaction needs 2..={POSTINGS_MAX} postings, not {0}")]
    PostingCount(usize),
    /// A zero posting.
    #[error("posting to {0} is zero")]
    Zero(String),
    /// An amount beyond ±21 million BTC.
    #[error("posting to {0} exceeds 21 million BTC")]
    TooLarge(String),
    /// Postings do not sum to zero.
    #[error("postings sum to {0} msat, not zero")]
    Unbalanced(i128),
    /// The same account twice.
    #[error("account {0} appears twice")]
    DuplicateAccount(String),
    /// A bad account name.
    #[error("bad account name {0:?}: {1}")]
    AccountName(String, &'static str),
}

impl Account {
    /// A user's available balance.
    pub fn available(owner: &str) -> Account {
        Account::User {
            owner: owner.to_string(),
            bucket: UserBucket::Available,
        }
    }
    /// A user's immature balance.
    pub fn immature(owner: &str) -> Account {
        Account::User {
            owner: owner.to_string(),
            bucket: UserBucket::Immature,
        }
    }
    /// What a user was paid in coinbase outputs of blocks not yet mature.
    pub fn coinbase(owner: &str) -> Account {
        Account::User {
            owner: owner.to_string(),
            bucket: UserBucket::Coinbase,
        }
    }

    /// Whether the balance may be negative: where money enters the books (mined coins, and the
    /// pool reserve, which pays PPS/FPPS credits ahead of the blocks that cover them).
    pub fn allow_negative(&self) -> bool {
        matches!(
            self,
            Account::Platform(PlatformAccount::Mined | PlatformAccount::PoolReserve)
        )
    }

    /// The stored name: `user/<owner>/available`, `user/<owner>/escrow/<order>`, `platform/fees`, ….
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<Account, TxError> {
        let bad = |why| TxError::AccountName(s.chars().take(64).collect(), why);
        if s.is_empty() || s.len() > KEY_BYTES_MAX {
            return Err(bad("must be 1..=200 bytes"));
        }
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["platform", p] => Ok(Account::Platform(match *p {
                "mined" => PlatformAccount::Mined,
                "fees" => PlatformAccount::Fees,
                "pool-reserve" => PlatformAccount::PoolReserve,
                "coinbase-in-flight" => PlatformAccount::CoinbaseInFlight,
                "payouts-in-flight" => PlatformAccount::PayoutsInFlight,
                "paid-out" => PlatformAccount::PaidOut,
                _ => return Err(bad("unknown platform account")),
            })),
            ["user", owner, rest @ ..] => {
                if owner.is_empty() || !owner.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad("owner must be printable ASCII without spaces"));
                }
                let bucket = match rest {
                    ["available"] => UserBucket::Available,
                    ["immature"] => UserBucket::Immature,
                    ["coinbase"] => UserBucket::Coinbase,
                    ["escrow", n] => {
                        UserBucket::Escrow(n.parse().map_err(|_| bad("escrow order must be a number"))?)
                    }
                    _ => return Err(bad("unknown user bucket")),
                };
                Ok(Account::User {
                    owner: (*owner).to_string(),
                    bucket,
                })
            }
            _ => Err(bad("expected user/<owner>/<bucket> or platform/<name>")),
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::User { owner, bucket } => match bucket {
                UserBucket::Available => write!(f, "user/{owner}/available"),
                UserBucket::Immature => write!(f, "user/{owner}/immature"),
                UserBucket::Coinbase => write!(f, "user/{owner}/coinbase"),
                UserBucket::Escrow(n) => write!(f, "user/{owner}/escrow/{n}"),
            },
            Account::Platform(p) => f.write_str(match p {
                PlatformAccount::Mined => "platform/mined",
                PlatformAccount::Fees => "platform/fees",
                PlatformAccount::PoolReserve => "platform/pool-reserve",
                PlatformAccount::CoinbaseInFlight => "platform/coinbase-in-flight",
                PlatformAccount::PayoutsInFlight => "platform/payouts-in-flight",
                PlatformAccount::PaidOut => "platform/paid-out",
            }),
        }
    }
}

/// One side of a transaction: `msat > 0` adds to the account, `< 0` takes from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    /// The account.
    pub account: Account,
    /// Signed millisatoshis.
    pub msat: i64,
}

impl Posting {
    /// Adds `amount` to `account`.
    pub fn credit(account: Account, amount: MilliSats) -> Result<Posting, TxError> {
        let msat = i64::try_from(amount.to_msat()).map_err(|_| TxError::TooLarge(account.name()))?;
        Ok(Posting { account, msat })
    }
    /// Takes `amount` from `account`.
    pub fn debit(account: Account, amount: MilliSats) -> Result<Posting, TxError> {
        let p = Posting::credit(account, amount)?;
        Ok(Posting { msat: -p.msat, ..p })
    }
}

/// A balanced, keyed transaction: only [`Transaction::new`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    key: String,
    memo: String,
    postings: Vec<Posting>,
}

impl Transaction {
    /// Checks every rule; the postings are kept in account-name order.
    pub fn new(key: &str, memo: &str, mut postings: Vec<Posting>) -> Result<Transaction, TxError> {
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return Err(TxError::Key);
        }
        if memo.len() > MEMO_BYTES_MAX {
            return Err(TxError::Memo);
        }
        if postings.len() < 2 || postings.len() > POSTINGS_MAX {
            return Err(TxError::PostingCount(postings.len()));
        }
        let mut sum: i128 = 0;
        for p in &postings {
            if p.msat == 0 {
                return Err(TxError::Zero(p.account.name()));
            }
            if p.msat.unsigned_abs() > MAX_MSAT.unsigned_abs() {
                return Err(TxError::TooLarge(p.account.name()));
            }
            sum += i128::from(p.msat);
        }
        if sum != 0 {
            return Err(TxError::Unbalanced(sum));
        }
        postings.sort_by_key(|p| p.account.name());
        for w in postings.windows(2) {
            if let [a, b] = w {
                if a.account == b.account {
                    return Err(TxError::DuplicateAccount(a.account.name()));
                }
            }
        }
        Ok(Transaction {
            key: key.to_string(),
            memo: memo.to_string(),
            postings,
        })
    }

    /// Moves `amount` from one account to another.
    pub fn transfer(
        key: &str,
        memo: &str,
        from: Account,
        to: Account,
        amount: MilliSats,
    ) -> Result<Transaction, TxError> {
        Transaction::new(
            key,
            memo,
            vec![Posting::debit(from, amount)?, Posting::credit(to, amount)?],
        )
    }

    /// The idempotency key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The memo.
    pub fn memo(&self) -> &str {
        &self.memo
    }
    /// The postings, in account-name order.
    pub fn postings(&self) -> &[Posting] {
        &self.postings
    }

    /// A digest of the content (memo and postings), stored with the key: re-posting a key with
    /// different content is refused instead of silently ignored.
    pub fn fingerprint(&self) -> String {
        let mut h = sha256d::Sha256::new();
        h.update(self.memo.as_bytes());
        h.update(&[0]);
        for p in &self.postings {
            h.update(p.account.name().as_bytes());
            h.update(&[0]);
            h.update(&p.msat.to_le_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msat(n: u64) -> MilliSats {
        MilliSats::new(n).unwrap()
    }

    #[test]
    fn names_round_trip() {
        for a in [
            Account::available("bcrt1qxyz"),
            Account::immature("bcrt1qxyz"),
            Account::coinbase("bcrt1qxyz"),
            Account::User {
                owner: "u1".into(),
                bucket: UserBucket::Escrow(42),
            },
            Account::Platform(PlatformAccount::Mined),
            Account::Platform(PlatformAccount::PayoutsInFlight),
        ] {
            assert_eq!(Account::parse(&a.name()).unwrap(), a);
        }
        for bad in [
            "",
            "user//available",
            "user/a b/available",
            "user/x/savings",
            "platform/bank",
            "x",
            "user/x/escrow/y",
        ] {
            assert!(Account::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_balanced_transactions_exist() {
        let a = Account::available("a");
        let b = Account::available("b");
        assert!(Transaction::transfer("k1", "", a.clone(), b.clone(), msat(5)).is_ok());
        assert_eq!(
            Transaction::new(
                "k",
                "",
                vec![
                    Posting {
                        account: a.clone(),
                        msat: 5
                    },
                    Posting {
                        account: b.clone(),
                        msat: -4
                    }
                ]
            ),
            Err(TxError::Unbalanced(1))
        );
        assert_eq!(
            Transaction::new(
                "k",
                "",
                vec![Posting {
                    account: a.clone(),
                    msat: 5
                }]
            ),
            Err(TxError::PostingCount(1))
        );
        assert!(matches!(
            Transaction::new(
                "k",
                "",
                vec![
                    Posting {
                        account: a.clone(),
                        msat: 0
                    },
                    Posting {
                        account: b.clone(),
                        msat: 0
                    }
                ]
            ),
            Err(TxError::Zero(_))
        ));
        assert!(matches!(
            Transaction::new(
                "k",
                "",
                vec![
                    Posting {
                        account: a.clone(),
                        msat: 5
                    },
                    Posting {
                        account: a.clone(),
                        msat: -5
                    }
                ]
            ),
            Err(TxError::DuplicateAccount(_))
        ));
        assert!(matches!(
            Transaction::new(
                "k",
                "",
                vec![
                    Posting {
                        account: a.clone(),
                        msat: i64::MAX
                    },
                    Posting {
                        account: b.clone(),
                        msat: i64::MIN + 1
                    }
                ]
            ),
            Err(TxError::TooLarge(_))
        ));
        assert_eq!(
            Transaction::transfer("", "", a.clone(), b.clone(), msat(1)),
            Err(TxError::Key)
        );
        assert_eq!(
            Transaction::transfer(&"k".repeat(201), "", a, b, msat(1)),
            Err(TxError::Key)
        );
    }

    proptest! {
        #[test]
        fn constructor_agrees_with_the_rules(amounts in proptest::collection::vec(-1_000_000i64..1_000_000, 0..8)) {
            let postings: Vec<Posting> = amounts
                .iter()
                .enumerate()
                .map(|(i, m)| Posting { account: Account::available(&format!("u{i}")), msat: *m })
                .collect();
            let ok = amounts.len() >= 2 && amounts.iter().all(|m| *m != 0) && amounts.iter().map(|m| i128::from(*m)).sum::<i128>() == 0;
            let t = Transaction::new("k", "m", postings);
            prop_assert_eq!(t.is_ok(), ok);
            if let Ok(t) = t {
                prop_assert_eq!(t.postings().iter().map(|p| i128::from(p.msat)).sum::<i128>(), 0);
            }
        }
    }
}
