// swift-tools-version:6.2
import PackageDescription

let package = Package(
    name: "tern",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tern", targets: ["tern"]),
        .library(name: "TernCore", targets: ["TernCore"]),
        .library(name: "TernWire", targets: ["TernWire"]),
        .library(name: "TernTopology", targets: ["TernTopology"]),
        .library(name: "TernRelay", targets: ["TernRelay"]),
        .library(name: "TernClient", targets: ["TernClient"]),
        .library(name: "TernSim", targets: ["TernSim"]),
        .library(name: "TernBench", targets: ["TernBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/swift-websocket.git", from: "1.6.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.15.0"),
    ],
    targets: [
        /// The system liblz4, used by the inter-region link codec.
        .systemLibrary(
            name: "CLZ4",
            pkgConfig: "liblz4",
            providers: [.apt(["liblz4-dev"]), .brew(["lz4"])]
        ),
        /// Sans-IO state machines: rooms, presence, history, recovery, permissions, limits.
        .target(
            name: "TernCore",
            dependencies: [
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        /// Client protocol (JSON) encoding and decoding.
        .target(
            name: "TernWire",
            dependencies: ["TernCore", "CLZ4", .product(name: "NIOCore", package: "swift-nio")]
        ),
        /// Topology config model, YAML parsing and validation with file:line errors.
        .target(
            name: "TernTopology",
            dependencies: [
                "TernCore",
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        /// SwiftNIO / Hummingbird runtime that drives TernCore.
        .target(
            name: "TernRelay",
            dependencies: [
                "TernCore", "TernWire", "TernTopology", "CLZ4",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        /// Deterministic discrete-event simulator that drives the same TernCore.
        .target(
            name: "TernSim",
            dependencies: [
                "TernCore", "TernWire", "TernTopology",
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ],
            // The simulator runs on one thread; every class property access is checked for
            // overlapping access at run time. Debug builds (and so the tests) keep those checks;
            // release builds, which measure speed and run the swarm, leave them out.
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        /// Swift WebSocket client with reconnect, backoff and recovery by position.
        .target(
            name: "TernClient",
            dependencies: [
                "TernWire", "TernCore",
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        /// Load generator for `tern bench`: WebSocket connections on NIO event loops that speak
        /// Tern's client protocol or the NATS text protocol, so both servers meet the same client.
        .target(
            name: "TernBench",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ]
        ),
        /// The command-line tool: relay, up, topology.
        .executableTarget(
            name: "tern",
            dependencies: [
                "TernRelay", "TernTopology", "TernClient", "TernSim", "TernBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(name: "TernCoreTests", dependencies: ["TernCore"]),
        .testTarget(name: "TernWireTests", dependencies: ["TernWire"]),
        /// Helpers shared by the test targets (running child processes).
        .target(name: "TernTestSupport", path: "Tests/TernTestSupport"),
        .testTarget(name: "TernTopologyTests", dependencies: ["TernTopology", "TernTestSupport"]),
        .testTarget(name: "TernSimTests", dependencies: ["TernSim", "TernCore", "TernTopology", "TernTestSupport"]),
        .testTarget(
            name: "TernRelayTests",
            dependencies: [
                "TernRelay", "TernClient", "TernWire", "TernTopology", "TernBench", "TernTestSupport",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
