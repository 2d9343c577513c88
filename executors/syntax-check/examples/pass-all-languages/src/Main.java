import java.util.List;

public class Main {
    record Point(int x, int y) {}

    public static void main(String[] args) {
        List<Point> points = List.of(new Point(1, 2), new Point(3, 4));
        int sum = points.stream().mapToInt(p -> p.x() + p.y()).sum();
        System.out.println("sum = " + sum);
    }
}
