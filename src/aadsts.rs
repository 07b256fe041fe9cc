//! The AADSTS error codes tokenrelay knows: those its code reacts to, those its fakes and
//! documentation name, and the common ones an operator meets with the credentials it
//! supports. Code that reacts to a code names it from here, never as a number of its own.
//! Entra documents that codes change and are added at any time
//! (login.microsoftonline.com/error looks any of them up), so nothing may depend on this list
//! being complete; [`KNOWN`] exists so that a metric label keeps a bounded set of values. A
//! code not listed is reported as `other` there, and in full in the error and the log.

/// Missing or malformed request body parameter.
pub const MISSING_PARAMETER: u32 = 900144;
/// The grant type is not supported.
pub const UNSUPPORTED_GRANT_TYPE: u32 = 70003;
/// The grant (refresh token, device code) is invalid or expired.
pub const INVALID_GRANT: u32 = 70000;
/// The requested scope is not valid (a resource URI typo).
pub const INVALID_SCOPE: u32 = 70011;
/// Authorization pending (device code flow, before the user signs in).
pub const AUTHORIZATION_PENDING: u32 = 70016;
/// No federated identity credential matches the presented token.
pub const NO_MATCHING_FEDERATION: u32 = 70021;
/// The refresh token expired because of inactivity.
pub const REFRESH_TOKEN_INACTIVE: u32 = 700082;
/// The refresh token expired (sign-in frequency policy).
pub const REFRESH_TOKEN_EXPIRED: u32 = 70043;
/// The application was not found in the tenant.
pub const APPLICATION_NOT_FOUND: u32 = 700016;
/// The client assertion's audience or application does not match.
pub const ASSERTION_MISMATCH: u32 = 700021;
/// The client assertion is expired or not yet valid.
pub const ASSERTION_EXPIRED: u32 = 700024;
/// The client assertion's signature (or certificate) is not accepted.
pub const INVALID_SIGNATURE: u32 = 700027;
/// No federated identity record matches the assertion's issuer.
pub const FEDERATION_ISSUER_MISMATCH: u32 = 700211;
/// No federated identity record matches the assertion's audience.
pub const FEDERATION_AUDIENCE_MISMATCH: u32 = 700212;
/// No federated identity record matches the assertion's subject.
pub const FEDERATION_SUBJECT_MISMATCH: u32 = 700213;
/// The client secret is not valid.
pub const INVALID_CLIENT_SECRET: u32 = 7000215;
/// Neither a client secret nor an assertion was presented.
pub const CREDENTIAL_MISSING: u32 = 7000218;
/// The client secret has expired.
pub const CLIENT_SECRET_EXPIRED: u32 = 7000222;
/// The application is disabled.
pub const APPLICATION_DISABLED: u32 = 7000112;
/// The tenant was not found.
pub const TENANT_NOT_FOUND: u32 = 90002;
/// The resource principal was not found in the tenant.
pub const RESOURCE_NOT_FOUND: u32 = 500011;
/// The user account does not exist.
pub const USER_NOT_FOUND: u32 = 50034;
/// Invalid user name or password.
pub const INVALID_CREDENTIALS: u32 = 50126;
/// The account is locked.
pub const ACCOUNT_LOCKED: u32 = 50053;
/// The password has expired.
pub const PASSWORD_EXPIRED: u32 = 50055;
/// The account is disabled.
pub const ACCOUNT_DISABLED: u32 = 50057;
/// Multi-factor authentication is required.
pub const MFA_REQUIRED: u32 = 50076;
/// The user must enrol for multi-factor authentication.
pub const MFA_ENROLLMENT_REQUIRED: u32 = 50079;
/// An external security challenge was not satisfied.
pub const EXTERNAL_CHALLENGE: u32 = 50158;
/// The grant has expired (the user must sign in again).
pub const GRANT_EXPIRED: u32 = 50173;
/// A loop of requests was detected; the client is throttled.
pub const LOOP_DETECTED: u32 = 50196;
/// Blocked by Conditional Access.
pub const CONDITIONAL_ACCESS_BLOCKED: u32 = 53003;
/// Conditional Access requires a managed device.
pub const MANAGED_DEVICE_REQUIRED: u32 = 530003;
/// The user or administrator has not consented.
pub const CONSENT_REQUIRED: u32 = 65001;
/// The user declined consent.
pub const CONSENT_DECLINED: u32 = 65004;
/// The scope value is not valid for the flow (client credentials need `/.default`).
pub const SCOPE_NOT_VALID_FOR_FLOW: u32 = 1002012;
/// An on-behalf-of assertion (the user's token) whose signature, audience or issuer the
/// authority does not accept.
pub const INVALID_ASSERTION: u32 = 50013;
/// An on-behalf-of assertion outside its validity window.
pub const ASSERTION_NOT_CURRENT: u32 = 500133;

/// The refusals a newer client assertion may cure: one outside its validity window, or one
/// whose signature the authority no longer accepts (the issuer's key or the certificate
/// rotated). Credentials that read their assertion from a file read it again and retry once.
pub const STALE_ASSERTION: [u32; 2] = [ASSERTION_EXPIRED, INVALID_SIGNATURE];

/// The refusals a newer client secret may cure: the secret is not (or no longer) one of the
/// application's, or it expired.
pub const STALE_SECRET: [u32; 2] = [INVALID_CLIENT_SECRET, CLIENT_SECRET_EXPIRED];

/// Every code above, in ascending order.
pub const KNOWN: [u32; 38] = {
    let mut codes = [
        MISSING_PARAMETER,
        UNSUPPORTED_GRANT_TYPE,
        INVALID_GRANT,
        INVALID_SCOPE,
        AUTHORIZATION_PENDING,
        NO_MATCHING_FEDERATION,
        REFRESH_TOKEN_INACTIVE,
        REFRESH_TOKEN_EXPIRED,
        APPLICATION_NOT_FOUND,
        ASSERTION_MISMATCH,
        ASSERTION_EXPIRED,
        INVALID_SIGNATURE,
        FEDERATION_ISSUER_MISMATCH,
        FEDERATION_AUDIENCE_MISMATCH,
        FEDERATION_SUBJECT_MISMATCH,
        INVALID_CLIENT_SECRET,
        CREDENTIAL_MISSING,
        CLIENT_SECRET_EXPIRED,
        APPLICATION_DISABLED,
        TENANT_NOT_FOUND,
        RESOURCE_NOT_FOUND,
        USER_NOT_FOUND,
        INVALID_CREDENTIALS,
        ACCOUNT_LOCKED,
        PASSWORD_EXPIRED,
        ACCOUNT_DISABLED,
        MFA_REQUIRED,
        MFA_ENROLLMENT_REQUIRED,
        EXTERNAL_CHALLENGE,
        GRANT_EXPIRED,
        LOOP_DETECTED,
        CONDITIONAL_ACCESS_BLOCKED,
        MANAGED_DEVICE_REQUIRED,
        CONSENT_REQUIRED,
        CONSENT_DECLINED,
        SCOPE_NOT_VALID_FOR_FLOW,
        INVALID_ASSERTION,
        ASSERTION_NOT_CURRENT,
    ];
    // Insertion sort: a `const` block cannot call `sort`.
    let mut i = 1;
    while i < codes.len() {
        let mut j = i;
        while j > 0 && codes[j - 1] > codes[j] {
            let swap = codes[j - 1];
            codes[j - 1] = codes[j];
            codes[j] = swap;
            j -= 1;
        }
        i += 1;
    }
    codes
};

/// The metric label for `code`: the code itself when known (a static string, so recording
/// allocates nothing), `other` for any other code, `none` when the authority sent none.
pub fn label(code: Option<u32>) -> &'static str {
    /// The decimal text of each [`KNOWN`] code, in the same order.
    const LABELS: [&str; KNOWN.len()] = [
        "50013", "50034", "50053", "50055", "50057", "50076", "50079", "50126", "50158", "50173", "50196", "53003",
        "65001", "65004", "70000", "70003", "70011", "70016", "70021", "70043", "90002", "500011", "500133", "530003",
        "700016", "700021", "700024", "700027", "700082", "700211", "700212", "700213", "900144", "1002012", "7000112",
        "7000215", "7000218", "7000222",
    ];
    match code {
        None => "none",
        Some(code) => KNOWN.binary_search(&code).map_or("other", |i| LABELS[i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_is_its_own_label_and_the_list_has_no_duplicates() {
        for pair in KNOWN.windows(2) {
            assert!(pair[0] < pair[1], "sorted without duplicates: {pair:?}");
        }
        for code in KNOWN {
            assert_eq!(label(Some(code)), code.to_string());
        }
    }

    #[test]
    fn any_other_code_is_other_and_no_code_is_none() {
        assert_eq!(label(None), "none");
        for code in [0, 1, 50035, 999_999, 7_000_216, u32::MAX] {
            assert_eq!(label(Some(code)), "other", "{code}");
        }
    }
}
