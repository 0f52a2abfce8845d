/// A map with O(1) insert, lookup and removal whose iteration order depends
/// only on the sequence of operations, never on hash seeds.
///
/// Core state iterates subscribers and presence entries; this keeps a
/// simulated run's trace identical for the same seed.
public struct IndexedMap<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private var keys: [Key] = []
    private var values: [Value] = []
    private var index: [Key: Int] = [:]

    /// An empty map.
    public init() {}

    /// The number of entries.
    public var count: Int { keys.count }
    /// Whether the map is empty.
    public var isEmpty: Bool { keys.isEmpty }

    /// The value for `key`, if any; setting nil removes it.
    public subscript(key: Key) -> Value? {
        get { index[key].map { values[$0] } }
        set {
            if let newValue {
                if let i = index[key] {
                    values[i] = newValue
                } else {
                    index[key] = keys.count
                    keys.append(key)
                    values.append(newValue)
                }
            } else {
                removeValue(forKey: key)
            }
        }
    }

    /// Sets the value for `key`, returning the one it replaces: one hash of the key, where reading and
    /// then setting through the subscript hash it two or three times.
    @discardableResult
    public mutating func updateValue(_ value: Value, forKey key: Key) -> Value? {
        let next = keys.count
        let i = Self.slot(&index[key, default: next])
        guard i < next else {
            keys.append(key)
            values.append(value)
            return nil
        }
        let old = values[i]
        values[i] = value
        return old
    }

    /// Reads a slot through `inout`: accessing `index[key, default: next]` for modification inserts
    /// `next` when `key` is new and otherwise yields its slot, so the key is looked up once either way.
    @inline(__always)
    private static func slot(_ i: inout Int) -> Int { i }

    /// Whether `key` is present.
    public func contains(_ key: Key) -> Bool { index[key] != nil }

    /// Removes `key`, moving the last entry into its place; returns the old value.
    @discardableResult
    public mutating func removeValue(forKey key: Key) -> Value? {
        guard let i = index.removeValue(forKey: key) else { return nil }
        let old = values[i]
        let last = keys.count - 1
        if i != last {
            keys[i] = keys[last]
            values[i] = values[last]
            index[keys[i]] = i
        }
        keys.removeLast()
        values.removeLast()
        return old
    }

    /// The keys, in the map's deterministic order.
    public var orderedKeys: [Key] { keys }

    /// Calls `body` for each entry in order, stopping early when it returns false.
    public func forEach(_ body: (Key, Value) -> Bool) {
        for i in keys.indices where !body(keys[i], values[i]) { return }
    }
}

extension Dictionary {
    /// Gives `body` the value for `key` in place (nil when there is none): `dictionary[key]?.field = x`
    /// moves the whole value out and back, copying every reference it holds.
    @inline(__always) @discardableResult
    mutating func update<T>(_ key: Key, _ body: (inout Value) -> T) -> T? {
        guard let i = index(forKey: key) else { return nil }
        return body(&values[i])
    }

    /// Gives `body` the value at `index` in place, through the modify accessor. Reading a field as
    /// `values[index].field` goes through the getter, which copies (and retains) the whole value;
    /// for the core's client and topic states that is a dozen reference counts per read.
    @inline(__always)
    mutating func inPlace<T>(_ index: Index, _ body: (inout Value) -> T) -> T {
        body(&values[index])
    }
}
