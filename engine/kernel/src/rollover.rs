//! Held credit at a rollover: a hold is not consumption, so it neither escapes the rollover nor delays it.
//!
//! At its period's end a grant rolls over what it still has: its remainder and the credit open
//! reservations hold on it, in that order, the holds by reservation id. The shares are floored
//! cumulatively, so floor(fraction x (remainder + held)) rolls over in all, what would have rolled had
//! every hold ended just before the period's end; the rest is breakage there and then, in the period
//! that ended (a closed period's breakage never changes afterwards). Each hold keeps its rolled share,
//! now on the ROLLOVER grant, and gives it back there when it ends (settled, released or expired); the
//! share that broke is no longer held. So the customer's credit and the revenue do not depend on
//! whether a gateway's hold happened to straddle the period's end, and credits stay conserved:
//! granted = drawn + remaining + held + expired, the ROLLOVER grant counted as granted its share.

use ethnum::I256;

use crate::account::Account;
use crate::money::Picos;

/// A fraction of 1 at 10^-18.
pub const ONE_E18: i128 = 1_000_000_000_000_000_000;

/// floor(credits x fraction_e18 / 10^18) for credits >= 0 and a fraction in [0, 1]: exact for any
/// amount (the product is widened to 256 bits).
pub fn share(credits: Picos, fraction_e18: i128) -> Picos {
    let product = I256::new(credits) * I256::new(fraction_e18) / I256::new(ONE_E18);
    product.as_i128()
}

/// How a grant's credit splits at its rollover.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Of the grant's remainder, what rolls over (the ROLLOVER grant's `remaining` to start with).
    pub rolled_remaining: Picos,
    /// What rolls over in all (the ROLLOVER grant's `amount`).
    pub rolled: Picos,
    /// Remainder and held credit together: `total - rolled` is breakage.
    pub total: Picos,
}

/// Splits what grant `grant` has at its period's end (see the module's note) and moves every hold's
/// rolled share onto grant index `to`, the ROLLOVER grant the caller makes when `rolled` > 0; a hold's
/// share that broke leaves the hold. Only the reservations change; the caller empties the grant.
pub fn split_at_rollover(account: &mut Account, grant: u32, to: u32, fraction_e18: i128) -> Split {
    let remaining = account.grants[grant as usize].remaining;
    let rolled_remaining = share(remaining, fraction_e18);
    let (mut total, mut rolled) = (remaining, rolled_remaining);
    for reservation in account.credits.as_deref_mut().into_iter().flat_map(|c| c.open.values_mut()) {
        for entry in reservation.held.iter_mut().filter(|(g, _)| *g == grant) {
            total += entry.1;
            let rolled_so_far = share(total, fraction_e18);
            *entry = (to, rolled_so_far - rolled);
            rolled = rolled_so_far;
        }
        reservation.held.retain(|&(g, credits)| g != to || credits > 0);
    }
    Split { rolled_remaining, rolled, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_floor_exactly_even_where_the_product_passes_i128() {
        assert_eq!(share(10, ONE_E18 / 2), 5);
        assert_eq!(share(11, ONE_E18 / 2), 5);
        assert_eq!(share(7, ONE_E18), 7);
        assert_eq!(share(7, 0), 0);
        let huge = 10_i128.pow(30); // 10^18 credits in picos: x 10^18 passes i128
        assert_eq!(share(huge, ONE_E18 / 4), huge / 4);
        assert_eq!(share(huge + 3, ONE_E18 / 4), huge / 4);
    }
}
