//! placeholder
/// x
pub struct ChangeCapture;
/// x
pub enum ChangeOperation {}
/// x
pub struct DocumentChange;
