struct Greeter {
    let name: String

    func greet(times: Int = 1) -> [String] {
        return (0..<times).map { "Hello, \(name) #\($0 + 1)" }
    }
}

let lines = Greeter(name: "lab").greet(times: 2)
for line in lines {
    print(line)
}
