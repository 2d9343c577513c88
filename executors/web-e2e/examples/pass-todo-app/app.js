const form = document.getElementById('new-todo');
const field = document.getElementById('todo-text');
const list = document.getElementById('todo-list');
const counter = document.getElementById('counter');
const todos = [];

function render() {
  list.replaceChildren(...todos.map((todo) => {
    const item = document.createElement('li');
    const box = document.createElement('input');
    const text = document.createElement('span');
    box.type = 'checkbox';
    box.checked = todo.done;
    box.addEventListener('change', () => { todo.done = box.checked; render(); });
    text.textContent = todo.text;
    item.className = todo.done ? 'done' : '';
    item.append(box, ' ', text);
    return item;
  }));
  const left = todos.filter((todo) => !todo.done).length;
  counter.textContent = `${left} item${left === 1 ? '' : 's'} left`;
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = field.value.trim();
  if (text) {
    todos.push({ text, done: false });
  }
  field.value = '';
  render();
});

render();
