//! Records of the state env that a restored backup or an installed snapshot brings from
//! another node: the raft layer's `AppliedState` (in the current layout or the older
//! `(last, membership)` pair) and an FSM's registry record `FsmRecord` (five-field limits or
//! the older three). Decoding never panics, and a decoded record re-encodes to bytes that
//! decode to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wraft_fuzz::Input;
use wraft_host::raft::AppliedState;
use wraft_host::state::FsmRecord;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let which = input.byte();
    let bytes = input.rest();
    if which % 2 == 0 {
        if let Ok(state) = AppliedState::decode(bytes) {
            let again = AppliedState::decode(&state.encode()).expect("an encoded state decodes");
            assert_eq!(again, state);
        }
    } else if let Ok(record) = FsmRecord::decode("fuzz", bytes) {
        let again = postcard::to_allocvec(&record).expect("encodes");
        assert_eq!(FsmRecord::decode("fuzz", &again).ok(), Some(record));
    }
});
