/// A dictionary that can remember which keys were changed (set, removed or given out in place)
/// since it was last asked. The core keeps its clients and topics in one, so that with invariant
/// checks on it checks, after every event, every client and topic that event changed
/// (`RelayCore.checkChangedAfterEvent`), at a cost in proportion to the event's own work rather than
/// to the whole state. With tracking off (a release relay) a change costs one branch more.
///
/// A key is recorded on any mutable access, whether or not the value actually changed: a check of
/// an unchanged value is wasted work, never a missed change.
struct TrackedMap<Key: Hashable & Comparable & Sendable, Value: Sendable>: Sendable {
    typealias Index = Dictionary<Key, Value>.Index

    private(set) var storage: [Key: Value] = [:]
    private var changes = ChangeLog<Key>()
    /// Whether changes are recorded.
    var tracking: Bool {
        get { changes.on }
        set { changes.on = newValue }
    }
    /// Whether, while tracking, a value replaced or removed is kept until `takeReplaced` (for checks
    /// that keep what they last saw of a value on the value itself).
    var keepsReplaced = false
    /// Per key, the value it held before it was first replaced or removed since the last `takeReplaced`.
    private var replaced: [Key: Value] = [:]

    init() {}

    /// The value for `key`. Read-only: a value is changed with `update(_:_:)`, in place, and replaced
    /// with `updateValue(_:forKey:)` or `removeValue(forKey:)`. Changing a field through a settable
    /// `map[key]?.field` would move the whole value out of the dictionary and back, copying every
    /// reference it holds; without a setter that cannot compile.
    subscript(key: Key) -> Value? {
        storage[key]
    }

    /// Sets the value for `key`, or removes it when `value` is nil.
    mutating func setValue(_ value: Value?, forKey key: Key) {
        if let value { updateValue(value, forKey: key) } else { removeValue(forKey: key) }
    }

    /// Sets the value for `key`; returns the one it replaced.
    @discardableResult
    mutating func updateValue(_ value: Value, forKey key: Key) -> Value? {
        changes.note(key)
        let old = storage.updateValue(value, forKey: key)
        keep(old, of: key)
        return old
    }

    /// The value for `key`, or `defaultValue` (inserted when changed in place).
    subscript(key: Key, default defaultValue: @autoclosure () -> Value) -> Value {
        get { storage[key, default: defaultValue()] }
        _modify {
            changes.note(key)
            yield &storage[key, default: defaultValue()]
        }
    }

    var count: Int { storage.count }
    var isEmpty: Bool { storage.isEmpty }
    var keys: Dictionary<Key, Value>.Keys { storage.keys }
    var values: Dictionary<Key, Value>.Values { storage.values }
    func mapValues<T>(_ transform: (Value) throws -> T) rethrows -> [Key: T] { try storage.mapValues(transform) }
    func compactMapValues<T>(_ transform: (Value) throws -> T?) rethrows -> [Key: T] { try storage.compactMapValues(transform) }
    var startIndex: Index { storage.startIndex }
    var endIndex: Index { storage.endIndex }
    func formIndex(after i: inout Index) { storage.formIndex(after: &i) }
    func index(forKey key: Key) -> Index? { storage.index(forKey: key) }

    @discardableResult
    mutating func removeValue(forKey key: Key) -> Value? {
        changes.note(key)
        let old = storage.removeValue(forKey: key)
        keep(old, of: key)
        return old
    }

    @inline(__always)
    private mutating func keep(_ old: Value?, of key: Key) {
        guard keepsReplaced, changes.on, let old, replaced.index(forKey: key) == nil else { return }
        replaced[key] = old
    }

    /// The values replaced or removed since the last call (each key's first), and forgets them.
    mutating func takeReplaced() -> [Key: Value] {
        guard !replaced.isEmpty else { return [:] }
        var taken: [Key: Value] = [:]
        swap(&taken, &replaced)
        return taken
    }

    /// Changes the value at `index` in place without counting it as changed: for the invariant
    /// checks' own record on the value, never for the state they check.
    @inline(__always)
    mutating func updateUnnoted<T>(_ index: Index, _ body: (inout Value) -> T) -> T {
        storage.inPlace(index, body)
    }

    /// Gives `body` the value at `index` in place (see `Dictionary.inPlace`); the key counts as changed.
    @inline(__always)
    mutating func inPlace<T>(_ index: Index, _ body: (inout Value) -> T) -> T {
        if changes.on { changes.note(storage.keys[index]) }
        return storage.inPlace(index, body)
    }

    /// Gives `body` the value for `key` in place (nil when there is none); the key counts as changed.
    /// Far cheaper than changing a field through `map[key]?.field`, whose optional accessor moves the
    /// whole value out and back (copying every reference it holds).
    @inline(__always) @discardableResult
    mutating func update<T>(_ key: Key, _ body: (inout Value) -> T) -> T? {
        guard let i = storage.index(forKey: key) else { return nil }
        changes.note(key)
        return storage.inPlace(i, body)
    }

    /// Reads the value at `index` in place, without copying it out and without counting it as changed
    /// (the invariant checks must not mark what they read).
    @inline(__always)
    mutating func reading<T>(_ index: Index, _ body: (Value) -> T) -> T {
        storage.inPlace(index) { body($0) }
    }

    /// Reads the value for `key` in place (`reading(_:_:)`), or nil when there is none.
    @inline(__always)
    mutating func reading<T>(_ key: Key, _ body: (Value) -> T) -> T? {
        guard let i = storage.index(forKey: key) else { return nil }
        return storage.inPlace(i) { body($0) }
    }

    /// Whether `key` has a value.
    func contains(_ key: Key) -> Bool { storage.index(forKey: key) != nil }

    /// The keys changed since the last call, each once, in the order first changed, and forgets them.
    mutating func takeChanged() -> [Key] { changes.take() }
}

extension TrackedMap: Sequence {
    func makeIterator() -> Dictionary<Key, Value>.Iterator { storage.makeIterator() }
    var underestimatedCount: Int { storage.count }
}

extension TrackedMap: ExpressibleByDictionaryLiteral {
    init(dictionaryLiteral elements: (Key, Value)...) {
        self.init()
        for (key, value) in elements { storage[key] = value }
    }
}

/// A set that can remember which members were inserted or removed since it was last asked
/// (`TrackedMap`, for sets).
struct TrackedSet<Element: Hashable & Comparable & Sendable>: Sendable, Sequence {
    private(set) var storage: Set<Element> = []
    private var changes = ChangeLog<Element>()
    var tracking: Bool {
        get { changes.on }
        set { changes.on = newValue }
    }

    init() {}

    var count: Int { storage.count }
    var isEmpty: Bool { storage.isEmpty }
    func contains(_ member: Element) -> Bool { storage.contains(member) }
    func makeIterator() -> Set<Element>.Iterator { storage.makeIterator() }

    @discardableResult
    mutating func insert(_ member: Element) -> (inserted: Bool, memberAfterInsert: Element) {
        changes.note(member)
        return storage.insert(member)
    }

    @discardableResult
    mutating func remove(_ member: Element) -> Element? {
        changes.note(member)
        return storage.remove(member)
    }

    mutating func removeAll() {
        if changes.on { for member in storage { changes.note(member) } }
        storage.removeAll()
    }

    /// The members inserted or removed since the last call, each once, in the order first changed, and forgets them.
    mutating func takeChanged() -> [Element] { changes.take() }
}

extension TrackedSet: ExpressibleByArrayLiteral {
    init(arrayLiteral elements: Element...) {
        self.init()
        for member in elements { storage.insert(member) }
    }
}

/// The keys a `TrackedMap` or `TrackedSet` changed since it was last asked, recorded while `on`.
///
/// A change appends its key (a key changed twice is listed twice); `take` removes the repeats once
/// per check, which costs less than hashing every change into a set. An event changes a few keys
/// of each map, so the repeats are found by comparing them, without sorting or allocating.
struct ChangeLog<Key: Hashable & Comparable & Sendable>: Sendable {
    var on = false
    private var keys: [Key] = []

    @inline(__always)
    mutating func note(_ key: Key) {
        if on { keys.append(key) }
    }

    /// The keys noted since the last call, each once, in the order first noted, and forgets them.
    mutating func take() -> [Key] {
        guard !keys.isEmpty else { return [] }
        var taken: [Key] = []
        swap(&taken, &keys)
        return taken.uniqued()
    }
}

extension Array where Element: Hashable {
    /// The elements in the order first seen, each once. The array itself when it has no repeats.
    func uniqued() -> [Element] {
        guard count > 1 else { return self }
        if count <= 16 {
            // Few elements (what one event changed): compare them rather than hash them.
            var repeated = false
            outer: for i in 1..<count {
                for j in 0..<i where self[j] == self[i] {
                    repeated = true
                    break outer
                }
            }
            guard repeated else { return self }
            var unique: [Element] = []
            unique.reserveCapacity(count)
            for element in self where !unique.contains(element) { unique.append(element) }
            return unique
        }
        var seen = Set<Element>(minimumCapacity: count)
        return filter { seen.insert($0).inserted }
    }
}
