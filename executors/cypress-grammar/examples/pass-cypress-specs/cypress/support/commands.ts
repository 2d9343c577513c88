declare global {
  namespace Cypress {
    interface Chainable {
      addTodo(text: string): Chainable<void>;
    }
  }
}

Cypress.Commands.add('addTodo', (text: string) => {
  cy.get('#todo-text').type(`${text}{enter}`);
});

export {};
