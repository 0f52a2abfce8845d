/// What a region sends a child region that asks for a topic from a position (`interest`): the
/// publications it missed, an epoch switch where a failover, a merge or a restarted home moved the
/// stream, and where the child stands afterwards, or a gap when the rings cannot fill it.
///
/// Decided from the topic's own stream state alone (`TopicState.catchUpPlan`), with no mesh and no
/// links, so the failover cases are unit-tested on their own (`TopicStreamTests`); the mesh turns
/// the plan into link messages (`RelayCore.serveChild`).
enum ChildCatchUp: Equatable, Sendable {
    /// Send `replay` (publications of the child's own epoch that it missed), then move it from
    /// `switchFrom` to `switchTo` when set, then send `then`, then tell it it stands at `at`.
    case serve(replay: [Publication], switchFrom: StreamPosition?, switchTo: StreamPosition?, then: [Publication], at: StreamPosition)
    /// The child's gap cannot be filled: it resets to `at` and its subscribers are told to resync.
    case gap(at: StreamPosition, reason: RecoveryFailure)
}

extension RelayCore.TopicState {
    /// How to catch up a child that stands at `since` (nil: nowhere yet) and, after a failover it
    /// followed, left the canonical epoch at `fork`. `isHome` says whether this region is the
    /// topic's home. Expires what the history ring holds past its TTL, as every ring read does.
    ///
    /// In order:
    /// 1. A restarted home continued its epoch past the adoption jump from `adoptedFrom`. A child
    ///    behind that point is caught up from the recovered ring and moved across the jump; a child
    ///    past it (it holds publications the home did not recover) is moved across from where it
    ///    stands, if this is the home (which asks it for those publications and sequences them
    ///    again); otherwise the child gets a gap.
    /// 2. A child exactly at `adoptedFrom` (or whose fork is) is moved across the jump.
    /// 3. A child where this region stood before its last epoch switch makes the same switch.
    /// 4. A child in another epoch: from its fork, when the fork is in this region's epoch; or, when
    ///    it stands in the epoch this region forked from (at or before the fork), the rest of that
    ///    epoch from the ring kept of it, then a switch to the start of this region's epoch.
    /// 5. Otherwise what the ring holds after `since`, or a gap.
    mutating func catchUpPlan(since: StreamPosition?, fork: StreamPosition?, isHome: Bool, now: TernInstant) -> ChildCatchUp {
        let current = position
        if let adopted = adoptedFrom, let since, since.epoch == adopted.epoch, current.epoch == adopted.epoch,
           case let jumped = adopted.offset.saturatingAdd(RelayCore.adoptionJump), since.offset != adopted.offset, since.offset < jumped {
            let across = StreamPosition(epoch: adopted.epoch, offset: jumped)
            var behind: [Publication] = []
            if since.offset < adopted.offset {
                behind = history.all.filter {
                    $0.position.epoch == adopted.epoch && $0.position.offset > since.offset && $0.position.offset <= adopted.offset
                }
            }
            if since.offset < adopted.offset, behind.count == Int(adopted.offset - since.offset),
               case .recovered(let publications) = history.publications(after: across, current: current, now: now) {
                return .serve(replay: behind, switchFrom: adopted, switchTo: across, then: publications, at: current)
            }
            if since.offset > adopted.offset, isHome,
               case .recovered(let publications) = history.publications(after: across, current: current, now: now) {
                return .serve(replay: [], switchFrom: since, switchTo: across, then: publications, at: current)
            }
            return .gap(at: current, reason: .evicted)
        }
        if let adopted = adoptedFrom, let from = [since, fork].compactMap({ $0 }).first, from == adopted || fork == adopted,
           case let across = StreamPosition(epoch: adopted.epoch, offset: adopted.offset.saturatingAdd(RelayCore.adoptionJump)),
           case .recovered(let publications) = history.publications(after: across, current: current, now: now) {
            return .serve(replay: [], switchFrom: since ?? adopted, switchTo: across, then: publications, at: current)
        }
        if let sw = lastSwitch, let since, since == sw.from, since.epoch != current.epoch || since.offset < current.offset,
           case .recovered(let publications) = history.publications(after: sw.to, current: current, now: now) {
            return .serve(replay: [], switchFrom: since, switchTo: sw.to, then: publications, at: current)
        }
        if let since, since.epoch != current.epoch {
            if let fork, fork.epoch == current.epoch, fork.offset <= current.offset,
               case .recovered(let publications) = history.publications(after: fork, current: current, now: now) {
                return .serve(replay: [], switchFrom: since, switchTo: fork, then: publications, at: current)
            }
            if let myFork = self.fork, since.epoch == myFork.epoch, since.offset <= myFork.offset,
               var prior = priorHistory,
               case .recovered(let old) = prior.publications(after: since, current: myFork, now: now),
               case let start = StreamPosition(epoch: current.epoch, offset: 0),
               case .recovered(let publications) = history.publications(after: start, current: current, now: now) {
                return .serve(replay: old, switchFrom: myFork, switchTo: start, then: publications, at: current)
            }
        }
        guard let since else { return .serve(replay: [], switchFrom: nil, switchTo: nil, then: [], at: current) }
        switch history.publications(after: since, current: current, now: now) {
        case .recovered(let publications): return .serve(replay: [], switchFrom: nil, switchTo: nil, then: publications, at: current)
        case .failed(let reason): return .gap(at: current, reason: reason)
        }
    }
}
