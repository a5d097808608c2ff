//! Alert formats: Slack Block Kit (`slack.rs`), the signed generic webhook (`webhook.rs`) and
//! the weekly digest (`digest.rs`).
