import Testing
@testable import TernCore

@Suite("IndexedMap")
struct IndexedMapTests {
    @Test("updateValue appends a new key, replaces an existing one in place, and agrees with the subscript after removals")
    func updateValueMatchesSubscript() {
        var map = IndexedMap<String, Int>()
        #expect(map.updateValue(1, forKey: "a") == nil)
        #expect(map.updateValue(2, forKey: "b") == nil)
        #expect(map.updateValue(3, forKey: "c") == nil)
        #expect(map.updateValue(20, forKey: "b") == 2)
        #expect(map.orderedKeys == ["a", "b", "c"])
        #expect(map["b"] == 20)
        #expect(map.count == 3)

        // A removal moves the last entry into the gap; updates after it find the moved slot.
        #expect(map.removeValue(forKey: "a") == 1)
        #expect(map.orderedKeys == ["c", "b"])
        #expect(map.updateValue(30, forKey: "c") == 3)
        #expect(map.updateValue(4, forKey: "d") == nil)
        #expect(map.orderedKeys == ["c", "b", "d"])
        #expect(map["c"] == 30 && map["b"] == 20 && map["d"] == 4 && map["a"] == nil)

        // Against a reference built with the subscript, over a long mixed sequence.
        var reference = IndexedMap<Int, Int>()
        var updated = IndexedMap<Int, Int>()
        var rng = SplitMix64(seed: 3)
        for step in 0..<5_000 {
            let key = Int(rng.next() % 64)
            if rng.next() % 4 == 0 {
                #expect(reference.removeValue(forKey: key) == updated.removeValue(forKey: key))
            } else {
                let old = reference[key]
                reference[key] = step
                #expect(updated.updateValue(step, forKey: key) == old)
            }
        }
        #expect(updated.orderedKeys == reference.orderedKeys)
        for key in reference.orderedKeys { #expect(updated[key] == reference[key]) }
    }
}

@Suite("Tracked changes")
struct TrackedChangesTests {
    @Test("a tracked map lists each changed key once, in the order first changed, and then forgets them")
    func changedKeysOnceInOrder() {
        var map = TrackedMap<String, Int>()
        map.tracking = true
        map.updateValue(1, forKey: "b")
        map.updateValue(2, forKey: "a")
        map.update("b") { $0 += 1 }
        _ = map.removeValue(forKey: "a")
        map.updateValue(3, forKey: "c")
        #expect(map.takeChanged() == ["b", "a", "c"])
        #expect(map.takeChanged() == [])
        map.update("c") { $0 += 1 }
        #expect(map.takeChanged() == ["c"])
    }

    @Test("uniqued keeps the first of each element in order, for short lists and long ones")
    func uniquedMatchesFirstOccurrences() {
        func reference(_ a: [Int]) -> [Int] {
            var out: [Int] = []
            for x in a where !out.contains(x) { out.append(x) }
            return out
        }
        var rng = SplitMix64(seed: 3)
        var inputs: [[Int]] = [[], [7], [1, 1], [1, 2], [2, 1, 2], Array(0..<16), Array(0..<17), Array(repeating: 5, count: 40)]
        for i in 0..<300 {
            let size = Int(rng.next() % 40)
            let spread = UInt64([2, 5, 100][i % 3])
            inputs.append((0..<size).map { _ in Int(rng.next() % spread) })
        }
        for a in inputs { #expect(a.uniqued() == reference(a), "\(a)") }
    }
}

@Suite("Client id hashing")
struct ClientIDHashTests {
    /// Ids as the relay makes them: a counter shifted past the event-loop slot bits, or-ed with the slot.
    static func relayIDs(_ n: Int, slotBits: Int = 6) -> [ClientID] {
        (0..<n).map { ClientID(UInt64($0 / 4) << UInt64(slotBits) | UInt64($0 % 4)) }
    }

    @Test("a dictionary keyed by client ids finds every id, and only those, after growth and removals")
    func dictionaryStaysCorrect() {
        let ids = Self.relayIDs(50_000)
        var map: [ClientID: Int] = [:]
        for (i, id) in ids.enumerated() { map[id] = i }
        #expect(map.count == ids.count)
        for (i, id) in ids.enumerated() where i % 3 == 0 { map[id] = nil }
        for (i, id) in ids.enumerated() { #expect(map[id] == (i % 3 == 0 ? nil : i)) }
        #expect(map[ClientID(UInt64.max)] == nil)
        #expect(Set(ids).count == ids.count)
    }

    @Test("ids that differ only in their high counter bits or their slot bits land in different buckets")
    func hashesSpread() {
        // 4,096 ids into 4,096 buckets by the low 12 bits of the hash: a random function fills about 63%.
        // A hash that passed the raw number through (low bits = slot and the counter's lowest bits) fills
        // far fewer for these ids, since every id here has 0 in bits 2...5.
        for seed in [0, 1, 0x5EED, -7] {
            let buckets = Set(Self.relayIDs(4_096).map { $0._rawHashValue(seed: seed) & 4_095 })
            #expect(buckets.count > 2_400, "seed \(seed): \(buckets.count) of 4096 buckets used")
        }
        // The seed changes the hash.
        let id = ClientID(42)
        #expect(id._rawHashValue(seed: 1) != id._rawHashValue(seed: 2))
    }
}
